//! Traces over OpenTelemetry's OTLP (`--otlp URL`, off by default): one server span per
//! request, with children for an isolate's start (when the request started one), the
//! handler, and each outbound `fetch` the handler began before its response started. A
//! W3C `traceparent` on the way in makes the request part of that trace (its sampling
//! decision included); otherwise `--otlp-sample` decides. The app sees (and its outbound
//! `fetch` forwards) a `traceparent` naming the handler span.
//!
//! Spans are built once the response head is out, from timestamps taken on the way, and
//! exported in batches (protobuf over HTTP) by the SDK's own thread: the request path never
//! waits for the collector.

use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SamplingDecision, SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, Tracer,
    TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer,
    SdkTracerProvider, ShouldSample,
};

/// How often finished spans are sent.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// A node's tracer.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Traces started here that are kept (0.0–1.0).
    ratio: f64,
    ids: RandomIdGenerator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("ratio", &self.ratio)
            .finish()
    }
}

/// The OTLP/HTTP traces endpoint of a collector's base URL (`http://host:4318` →
/// `http://host:4318/v1/traces`); a URL naming `/v1/traces` is used as it is.
fn traces_endpoint(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/v1/traces") {
        url.to_string()
    } else {
        format!("{url}/v1/traces")
    }
}

impl Tracing {
    /// Exports to the collector at `url`, keeping `ratio` of the traces that start here;
    /// spans carry `service.name` = `service` and `outpost.node` = `node`.
    pub fn new(url: &str, ratio: f64, service: &str, node: &str) -> anyhow::Result<Tracing> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_endpoint(url))
            .with_timeout(Duration::from_secs(10))
            .with_headers(Default::default())
            .build()
            .map_err(|e| anyhow::anyhow!("the OTLP exporter for {url}: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_string())
            .with_attribute(KeyValue::new("outpost.node", node.to_string()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("outpost");
        Ok(Tracing {
            provider,
            tracer,
            ratio: ratio.clamp(0.0, 1.0),
            ids: RandomIdGenerator::default(),
        })
    }

    /// Sends what is pending (before the process exits).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// The trace a request joins: its `traceparent`'s, else a new one sampled at the
    /// node's ratio.
    pub fn begin(&self, headers: &http::HeaderMap) -> RequestTrace {
        let parent = caller(headers);
        let (trace_id, sampled) = match &parent {
            Some(parent) => (parent.trace_id(), parent.is_sampled()),
            None => {
                let trace_id = self.ids.new_trace_id();
                (trace_id, keeps(trace_id, self.ratio))
            }
        };
        RequestTrace {
            arrived: SystemTime::now(),
            trace_id,
            server: self.ids.new_span_id(),
            handler: self.ids.new_span_id(),
            parent,
            sampled,
        }
    }

    /// Records a request's spans, if its trace is sampled.
    pub fn finish(&self, trace: &RequestTrace, done: Finished<'_>) {
        if !trace.sampled {
            return;
        }
        let parent = match &trace.parent {
            Some(parent) => Context::new().with_remote_span_context(parent.clone()),
            None => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", done.method.to_string()),
            KeyValue::new("url.path", done.path.to_string()),
            KeyValue::new("http.response.status_code", i64::from(done.status)),
            KeyValue::new("outpost.request_id", done.request_id.to_string()),
        ];
        if let Some(app) = done.app {
            attributes.push(KeyValue::new("outpost.app", app.to_string()));
        }
        if let Some(cache) = done.cache {
            attributes.push(KeyValue::new("outpost.cache", cache));
        }
        let server = self
            .tracer
            .span_builder(done.method.to_string())
            .with_kind(SpanKind::Server)
            .with_trace_id(trace.trace_id)
            .with_span_id(trace.server)
            .with_start_time(trace.arrived)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(server);
        if let Some(timing) = done.timing {
            // The isolate received the request `wall` before its response started.
            let handler_start = done.end.checked_sub(timing.wall).unwrap_or(trace.arrived);
            if let (true, Some(dispatched)) = (timing.cold, done.dispatched) {
                let mut start = self
                    .tracer
                    .span_builder("isolate start")
                    .with_kind(SpanKind::Internal)
                    .with_start_time(dispatched)
                    .start_with_context(&self.tracer, &cx);
                opentelemetry::trace::Span::end_with_timestamp(&mut start, handler_start);
            }
            let handler = self
                .tracer
                .span_builder("handler")
                .with_kind(SpanKind::Internal)
                .with_span_id(trace.handler)
                .with_start_time(handler_start)
                .with_attributes([
                    KeyValue::new("outpost.cpu_ms", timing.cpu.as_secs_f64() * 1000.0),
                    KeyValue::new("outpost.cold", timing.cold),
                ])
                .start_with_context(&self.tracer, &cx);
            let handler_cx = cx.with_span(handler);
            for fetch in &timing.fetches {
                let mut span = self
                    .tracer
                    .span_builder(format!("fetch {}", fetch.method))
                    .with_kind(SpanKind::Client)
                    .with_start_time(fetch.start)
                    .with_attributes([
                        KeyValue::new("http.request.method", fetch.method.clone()),
                        KeyValue::new("url.full", fetch.url.clone()),
                        KeyValue::new("http.response.status_code", i64::from(fetch.status)),
                    ])
                    .start_with_context(&self.tracer, &handler_cx);
                opentelemetry::trace::Span::end_with_timestamp(
                    &mut span,
                    fetch.end.unwrap_or(done.end),
                );
            }
            handler_cx.span().end_with_timestamp(done.end);
        }
        cx.span().end_with_timestamp(done.end);
    }
}

/// A request's place in a trace, decided when it arrives.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// When the request arrived: the server span's start (the clock is read only for
    /// requests that are traced).
    arrived: SystemTime,
    trace_id: TraceId,
    server: SpanId,
    handler: SpanId,
    /// The caller's span, from its `traceparent`.
    parent: Option<SpanContext>,
    sampled: bool,
}

impl RequestTrace {
    /// The `traceparent` the app sees and forwards: this trace, the handler span.
    pub fn traceparent(&self) -> http::HeaderValue {
        let flags = if self.sampled { "01" } else { "00" };
        let value = format!("00-{}-{}-{flags}", self.trace_id, self.handler);
        http::HeaderValue::from_str(&value).expect("hex digits are a header value")
    }
}

/// What a request came to, for its spans.
pub struct Finished<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub status: u16,
    pub request_id: &'a str,
    pub app: Option<&'a str>,
    pub cache: Option<&'static str>,
    /// When it was handed to the app's isolate, if it was.
    pub dispatched: Option<SystemTime>,
    /// When its response head was ready.
    pub end: SystemTime,
    pub timing: Option<&'a outpost_pool::Timing>,
}

/// Whether a trace started here is kept: OpenTelemetry's TraceIdRatioBased sampler decides
/// from the trace id, so every node agrees.
fn keeps(trace_id: TraceId, ratio: f64) -> bool {
    let decision = Sampler::TraceIdRatioBased(ratio)
        .should_sample(None, trace_id, "", &SpanKind::Server, &[], &[])
        .decision;
    decision == SamplingDecision::RecordAndSample
}

/// The caller's span, from a valid W3C `traceparent` (and its `tracestate`).
fn caller(headers: &http::HeaderMap) -> Option<SpanContext> {
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_traceparent(value: &str) -> Option<SpanContext> {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_str(value).unwrap());
        caller(&headers)
    }

    #[test]
    fn traceparents() {
        let context =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_sampled());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        assert_eq!(traces_endpoint("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_endpoint("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn sampling_by_ratio() {
        let ids = RandomIdGenerator::default();
        let kept = (0..10_000)
            .filter(|_| keeps(ids.new_trace_id(), 0.1))
            .count();
        assert!((700..1300).contains(&kept), "{kept}");
        assert!(keeps(ids.new_trace_id(), 1.0));
        assert!(!(0..1000).any(|_| keeps(ids.new_trace_id(), 0.0)));
    }
}
