//! Prometheus metrics of a node (`/metrics` on its admin listener), through
//! `prometheus-client`. Every name starts with `outpost_`; per-app series are labelled `app`,
//! and once [`Metrics::new`]'s cap of distinct apps is reached, further apps share the label
//! `other`, so a node with many tenants cannot blow up the number of series.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `outpost_requests_total` | counter | `app`, `status` (`2xx`…`5xx`), `protocol` (`http1`, `http2`, `http3`) |
//! | `outpost_request_duration_seconds` | histogram | `app` — arrival to response head |
//! | `outpost_cpu_seconds_total` | counter | `app` — handler CPU up to the response head |
//! | `outpost_limit_violations_total` | counter | `app`, `limit` (`cpu`, `memory`, `subrequests`, `timeout`, `body_size`, `overloaded`, `other`) |
//! | `outpost_isolates_live`, `outpost_isolates_peak`, `outpost_isolates_max` | gauge | |
//! | `outpost_isolates_created_total`, `outpost_isolates_evicted_total` | counter | |
//! | `outpost_isolate_memory_bytes` | gauge | all live isolates' measured memory together |
//! | `outpost_spare_runtimes` | gauge | ready runtimes waiting for a cold app (`--spares` per worker) |
//! | `outpost_requests_in_flight` | gauge | requests isolates hold now |
//! | `outpost_requests_queued` | gauge | requests waiting in isolates' queues |
//! | `outpost_app_version_info` | gauge (1) | `app`, `version` — what a PoP serves |
//! | `outpost_origin_reachable` | gauge | PoP: 1 while the origin answers its feed |
//! | `outpost_sync_lag_seconds` | gauge | PoP: time since the feed last answered |
//! | `outpost_cache_responses_total` | counter | `app`, `result` (`hit`, `stale` (served stale), `revalidated`, `miss`, `bypass`) |
//! | `outpost_cache_bytes` | gauge | `tier` (`memory`, `disk`) — what the cache holds |

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_cache::rules::CacheResult;
use outpost_pool::Pool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::error::Kind;

/// Distinct apps labelled by name before the rest share `other`.
pub const DEFAULT_MAX_APPS: usize = 1_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    status: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    app: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    app: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    app: String,
    version: String,
}

type HistogramFamily = Family<AppLabels, Histogram, fn() -> Histogram>;

/// A node's metrics; shared by its listeners, encoded by its admin listener.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    cpu: Family<AppLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    limits: Family<LimitLabels, Counter>,
    versions: Family<VersionLabels, Gauge>,
    cache: Family<CacheLabels, Counter>,
    reachable: Gauge,
    /// Unix ms of the feed's last answer (0: never).
    last_sync_ms: Arc<AtomicI64>,
    /// Each labelled app's series (and `other`'s, `none`'s), found once per request by name.
    apps: RwLock<AppIndex>,
    max_apps: usize,
    /// Tells this node's metrics from another's in a thread's [`LAST_SERIES`].
    id: u64,
}

thread_local! {
    /// The series the thread's last answered request was counted in, with the id of the
    /// metrics it belongs to: a thread serving one app mostly finds its series here, without
    /// the index's lock, hash and reference count.
    static LAST_SERIES: std::cell::RefCell<Option<(u64, Arc<AppSeries>)>> =
        const { std::cell::RefCell::new(None) };
}

/// The series by app name, and how many apps have a label of their own.
#[derive(Default)]
struct AppIndex {
    /// Hashed with foldhash: the names are the node's own apps', not a client's input.
    by_name: HashMap<String, Arc<AppSeries>, foldhash::fast::RandomState>,
    labelled: usize,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const PROTOCOLS: [&str; 3] = ["http1", "http2", "http3"];

/// One app label's series, taken from their families once: a request then updates them
/// without hashing label sets. A series appears in the exposition when first used, as when
/// it is made in its family on demand.
struct AppSeries {
    label: String,
    duration: Histogram,
    cpu: Counter<f64, AtomicU64>,
    /// By status class, then protocol.
    requests: [[OnceLock<Counter>; PROTOCOLS.len()]; STATUS_CLASSES.len()],
    /// By [`CacheResult`] (`result as usize`).
    cache: [OnceLock<Counter>; CacheResult::ALL.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What one answered request adds.
pub struct Answered<'a> {
    pub app: Option<&'a str>,
    pub status: http::StatusCode,
    pub version: http::Version,
    pub elapsed: Duration,
    pub cpu: Option<Duration>,
    pub failure: Option<(Kind, &'a str)>,
    /// What the cache did, from the response's `Cache-Status` ([`CacheResult::of`]).
    pub cache: Option<CacheResult>,
}

impl Metrics {
    /// Metrics of a node running `pool` (and `cache`), labelling at most `max_apps` apps by
    /// name.
    pub fn new(pool: Arc<Pool>, cache: Arc<outpost_cache::Cache>, max_apps: usize) -> Metrics {
        let mut registry = Registry::with_prefix("outpost");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered", requests.clone());
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16)));
        registry.register(
            "request_duration_seconds",
            "From a request's arrival to its response head",
            duration.clone(),
        );
        let cpu = Family::<AppLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "cpu_seconds",
            "Handler CPU time up to the response head",
            cpu.clone(),
        );
        let limits = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limit_violations",
            "Requests stopped or refused by a limit",
            limits.clone(),
        );
        let versions = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "app_version_info",
            "The version each app serves (1)",
            versions.clone(),
        );
        let cache_responses = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_responses",
            "Responses by what the cache did for them",
            cache_responses.clone(),
        );
        let reachable = Gauge::default();
        let last_sync_ms = Arc::new(AtomicI64::new(0));
        registry.register_collector(Box::new(PoolCollector {
            pool,
            cache,
            reachable: reachable.clone(),
            last_sync_ms: last_sync_ms.clone(),
        }));
        Metrics {
            registry,
            requests,
            duration,
            cpu,
            limits,
            versions,
            cache: cache_responses,
            reachable,
            last_sync_ms,
            apps: RwLock::new(AppIndex::default()),
            max_apps,
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        }
    }

    /// The label for `app`: its name while fewer than the cap are labelled, else `other`.
    fn app_label(&self, app: Option<&str>) -> String {
        self.series(app).label.clone()
    }

    /// The series of `app`'s label (see [`Metrics::app_label`]), made on its first use.
    fn series(&self, app: Option<&str>) -> Arc<AppSeries> {
        let name = app.unwrap_or("none");
        if let Some(series) = self
            .apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(name)
        {
            return series.clone();
        }
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        let apps = &mut *apps;
        if let Some(series) = apps.by_name.get(name) {
            return series.clone();
        }
        // `none` (no app) does not count against the cap.
        let label = if app.is_none() || apps.labelled < self.max_apps {
            apps.labelled += usize::from(app.is_some());
            name
        } else {
            "other"
        };
        let series = apps
            .by_name
            .entry(label.to_string())
            .or_insert_with(|| {
                let labels = AppLabels {
                    app: label.to_string(),
                };
                Arc::new(AppSeries {
                    label: label.to_string(),
                    duration: self.duration.get_or_create(&labels).clone(),
                    cpu: self.cpu.get_or_create(&labels).clone(),
                    requests: Default::default(),
                    cache: Default::default(),
                })
            })
            .clone();
        // An app over the cap finds `other`'s series under its own name next time (the
        // names remembered that way are bounded too).
        if label != name && apps.by_name.len() < 4 * self.max_apps {
            apps.by_name.insert(name.to_string(), series.clone());
        }
        series
    }

    /// Runs `f` with the series of `app`'s label: the thread's last one if it is `app`'s
    /// own (an app over the cap, counted as `other`, is looked up each time).
    fn with_series<R>(&self, app: Option<&str>, f: impl FnOnce(&AppSeries) -> R) -> R {
        LAST_SERIES.with_borrow_mut(|last| {
            if let Some((id, series)) = last.as_ref() {
                if *id == self.id && series.label == app.unwrap_or("none") {
                    return f(series);
                }
            }
            let series = self.series(app);
            let result = f(&series);
            *last = Some((self.id, series));
            result
        })
    }

    /// Counts one answered request.
    pub fn answered(&self, answer: Answered<'_>) {
        self.with_series(answer.app, |series| self.count(series, answer));
    }

    fn count(&self, series: &AppSeries, answer: Answered<'_>) {
        let status = status_index(answer.status);
        let protocol = match answer.version {
            http::Version::HTTP_2 => 1,
            http::Version::HTTP_3 => 2,
            _ => 0,
        };
        series.requests[status][protocol]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        app: series.label.clone(),
                        status: STATUS_CLASSES[status],
                        protocol: PROTOCOLS[protocol],
                    })
                    .clone()
            })
            .inc();
        series.duration.observe(answer.elapsed.as_secs_f64());
        if let Some(cpu) = answer.cpu {
            series.cpu.inc_by(cpu.as_secs_f64());
        }
        if let (Some(result), Some(_)) = (answer.cache, answer.app) {
            series.cache[result as usize]
                .get_or_init(|| {
                    self.cache
                        .get_or_create(&CacheLabels {
                            app: series.label.clone(),
                            result: result.as_str(),
                        })
                        .clone()
                })
                .inc();
        }
        if let Some((kind, message)) = answer.failure {
            if let Some(limit) = limit_of(kind, message) {
                self.limits
                    .get_or_create(&LimitLabels {
                        app: series.label.clone(),
                        limit,
                    })
                    .inc();
            }
        }
    }

    /// A PoP's view of its origin: whether the feed answers; an answer also marks a sync.
    pub fn origin_reachable(&self, reachable: bool) {
        self.reachable.set(i64::from(reachable));
        if reachable {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            self.last_sync_ms.store(now, Ordering::Relaxed);
        }
    }

    /// The versions served now, by app (replacing the previous set).
    pub fn serving(&self, apps: impl IntoIterator<Item = (String, String)>) {
        self.versions.clear();
        for (app, version) in apps {
            let app = self.app_label(Some(&app));
            self.versions
                .get_or_create(&VersionLabels { app, version })
                .set(1);
        }
    }

    /// The text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("encoding metrics failed: {e}");
        }
        text
    }
}

/// The `status` label of a response: `1xx` … `5xx`.
pub(crate) fn status_class(status: http::StatusCode) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// The index of `status`'s class in [`STATUS_CLASSES`].
fn status_index(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Which limit a failure was, if it was one.
fn limit_of(kind: Kind, message: &str) -> Option<&'static str> {
    Some(match kind {
        Kind::Timeout => "timeout",
        Kind::BodyTooLarge => "body_size",
        Kind::Overloaded => "overloaded",
        Kind::LimitExceeded => {
            let message = message.to_ascii_lowercase();
            if message.contains("cpu") {
                "cpu"
            } else if message.contains("memory") {
                "memory"
            } else if message.contains("subrequest") {
                "subrequests"
            } else {
                "other"
            }
        }
        _ => return None,
    })
}

/// The scheduler's counters and a PoP's sync state, read at each scrape.
struct PoolCollector {
    pool: Arc<Pool>,
    cache: Arc<outpost_cache::Cache>,
    reachable: Gauge,
    last_sync_ms: Arc<AtomicI64>,
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCollector").finish_non_exhaustive()
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.pool.stats();
        let gauges: [(&str, &str, i64); 7] = [
            (
                "spare_runtimes",
                "Ready runtimes waiting for a cold app, on every worker",
                outpost_isolate::spare_runtimes() as i64,
            ),
            ("isolates_live", "Isolates alive now", stats.live as i64),
            (
                "isolates_peak",
                "The most isolates alive at once",
                stats.peak as i64,
            ),
            (
                "isolates_max",
                "The isolate budget (--max-isolates)",
                stats.max_isolates as i64,
            ),
            (
                "isolate_memory_bytes",
                "Memory of all live isolates, as last measured",
                stats.instances.iter().map(|i| i.memory_bytes as i64).sum(),
            ),
            (
                "requests_in_flight",
                "Requests isolates hold now",
                stats.instances.iter().map(|i| i64::from(i.in_flight)).sum(),
            ),
            (
                "requests_queued",
                "Requests waiting in isolates' queues (an isolate at its concurrency limit)",
                stats.instances.iter().map(|i| i64::from(i.queued)).sum(),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let counters: [(&str, &str, u64); 2] = [
            ("isolates_created", "Isolates started", stats.created),
            (
                "isolates_evicted",
                "Isolates evicted (idle, budget, memory)",
                stats.evicted,
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let (memory, disk) = self.cache.sizes();
        let mut family = encoder.encode_descriptor(
            "cache_bytes",
            "Bytes the cache holds, by tier",
            None,
            MetricType::Gauge,
        )?;
        for (tier, bytes) in [("memory", memory), ("disk", disk)] {
            let labels = [("tier", tier)];
            ConstGauge::new(bytes as i64).encode(family.encode_family(&labels)?)?;
        }
        let last_sync = self.last_sync_ms.load(Ordering::Relaxed);
        if last_sync > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let lag = ConstGauge::new((now - last_sync).max(0) as f64 / 1000.0);
            lag.encode(encoder.encode_descriptor(
                "sync_lag_seconds",
                "Time since the origin's change feed last answered",
                None,
                MetricType::Gauge,
            )?)?;
            let reachable = ConstGauge::new(self.reachable.get());
            reachable.encode(encoder.encode_descriptor(
                "origin_reachable",
                "1 while the origin's change feed answers",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Every metric the dashboard queries is one a node or origin exports (the names in
    /// this module's documentation and the origin's).
    #[test]
    fn the_grafana_dashboard_queries_metrics_that_exist() {
        let dashboard = include_str!("../../examples/operations/grafana-dashboard.json");
        let exported = [include_str!("metrics.rs"), include_str!("origin.rs")].concat();
        let value: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let mut expressions = Vec::new();
        for panel in value["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                expressions.push(target["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(expressions.len() > 10);
        for expr in &expressions {
            let mut rest = expr.as_str();
            while let Some(at) = rest.find("outpost_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_total")
                    .trim_start_matches("outpost_origin_")
                    .trim_start_matches("outpost_");
                assert!(
                    exported.contains(&format!("\"{base}\""))
                        || exported.contains(&format!("`{name}`")),
                    "the dashboard queries {name}, which nothing exports ({expr})"
                );
                rest = &rest[at + name.len()..];
            }
        }
    }
}
