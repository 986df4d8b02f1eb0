//! What an operator sees: `/metrics` scraped and parsed after known traffic (counters move by
//! exactly that much, apps past the label cap fold into `other`, limit violations by kind,
//! a PoP's served versions and origin reachability), one JSON log line per request carrying
//! the id the client saw (tenant console lines too), and a PoP's readiness before and after
//! its first sync.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{app_dir, http1, Node, DEPLOY, POP};

/// An app `site` whose handler runs `body`, deployed to `origin` with the deploy token.
fn deploy_site(origin: &Node, body: &str) -> tempfile::TempDir {
    let site = common::app(
        "site",
        &format!("export default {{ fetch(request) {{ {body} }} }};\n"),
    );
    let (ok, _, err) = common::outpost(
        &[
            "deploy",
            site.path().to_str().unwrap(),
            "--origin",
            &origin.url,
        ],
        Some(DEPLOY),
    );
    assert!(ok, "{err}");
    site
}

/// `/metrics` as sample name with labels → value, e.g.
/// `outpost_requests_total{app="a",status="2xx",protocol="http1"}` → 3.
async fn scrape(admin: &str) -> HashMap<String, f64> {
    let res = http1()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = res.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (sample, value) = l.rsplit_once(' ').unwrap();
            (sample.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn sample(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(0.0)
}

fn three_apps() -> tempfile::TempDir {
    let module = |body: &str| format!("export default {{ async fetch() {{ {body} }} }};\n");
    app_dir(&[
        ("a/outpost.toml", "name = \"a\"\n"),
        ("a/src/index.js", &module("return new Response('a');")),
        ("b/outpost.toml", "name = \"b\"\n"),
        ("b/src/index.js", &module("throw new Error('b fails');")),
        ("c/outpost.toml", "name = \"c\"\n[limits]\ncpu_ms = 20\n"),
        ("c/src/index.js", &module("for (;;) {}")),
    ])
}

async fn get_host(node: &Node, client: &reqwest::Client, host: &str) -> u16 {
    client
        .get(node.url("/"))
        .header("host", host)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// GET / for `host` over HTTP/2 (which names the host in `:authority`, not `Host`).
async fn get_host_h2(node: &Node, host: &str) -> u16 {
    let addr: std::net::SocketAddr = node.url.trim_start_matches("http://").parse().unwrap();
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve(host, addr)
        .build()
        .unwrap()
        .get(format!("http://{host}:{}/", addr.port()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn metrics_count_requests_by_app_status_and_protocol() {
    let apps = three_apps();
    let mut node = Node::start(apps.path(), &["--admin", "127.0.0.1:0"]);
    let admin = node.admin_url();
    let before = scrape(&admin).await;
    for _ in 0..3 {
        assert_eq!(get_host(&node, &http1(), "a.localhost").await, 200);
    }
    assert_eq!(get_host_h2(&node, "a.localhost").await, 200);
    for _ in 0..2 {
        assert_eq!(get_host(&node, &http1(), "b.localhost").await, 500);
    }
    assert_eq!(get_host(&node, &http1(), "c.localhost").await, 503);
    assert_eq!(get_host(&node, &http1(), "nobody.localhost").await, 404);
    let after = scrape(&admin).await;
    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(
        moved(r#"outpost_requests_total{app="a",status="2xx",protocol="http1"}"#),
        3.0
    );
    assert_eq!(
        moved(r#"outpost_requests_total{app="a",status="2xx",protocol="http2"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"outpost_requests_total{app="b",status="5xx",protocol="http1"}"#),
        2.0
    );
    assert_eq!(
        moved(r#"outpost_requests_total{app="none",status="4xx",protocol="http1"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"outpost_limit_violations_total{app="c",limit="cpu"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"outpost_request_duration_seconds_count{app="a"}"#),
        4.0
    );
    assert!(moved(r#"outpost_cpu_seconds_total{app="a"}"#) > 0.0);
    assert!(sample(&after, "outpost_isolates_live") >= 2.0, "{after:?}");
    assert!(sample(&after, "outpost_isolates_created_total") >= 3.0);
    // Memory is measured every 500 ms: within a few seconds every live isolate has a figure.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&scrape(&admin).await, "outpost_isolate_memory_bytes") == 0.0 {
        assert!(Instant::now() < deadline, "no isolate memory measured");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The spare a cold start took is made again (one per worker by default).
    while sample(&scrape(&admin).await, "outpost_spare_runtimes") < 1.0 {
        assert!(Instant::now() < deadline, "no spare runtime ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn apps_past_the_label_cap_fold_into_other() {
    let apps = three_apps();
    let mut node = Node::start(
        apps.path(),
        &["--admin", "127.0.0.1:0", "--metrics-max-apps", "1"],
    );
    let admin = node.admin_url();
    get_host(&node, &http1(), "a.localhost").await;
    get_host(&node, &http1(), "b.localhost").await;
    let metrics = scrape(&admin).await;
    let apps: std::collections::BTreeSet<String> = metrics
        .keys()
        .filter(|k| k.starts_with("outpost_requests_total"))
        .filter_map(|k| {
            k.split("app=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(String::from)
        })
        .collect();
    assert_eq!(apps.len(), 2, "{apps:?}");
    assert!(apps.contains("other"), "{apps:?}");
}

#[tokio::test]
async fn one_json_log_line_per_request_with_the_id_the_client_saw() {
    let site = app_dir(&[
        ("outpost.toml", "name = \"site\"\n"),
        (
            "src/index.js",
            "export default { async fetch(request) { console.log('inside the handler'); await null; console.warn('after an await'); return new Response(request.headers.get('x-request-id')); } };\n",
        ),
    ]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    command
        .args(["dev", "--log-format", "json"])
        .arg(site.path())
        .env_remove("OUTPOST_LOG");
    let mut node = Node::spawn(command);
    let res = http1().get(node.url("/")).send().await.unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{id}");
    // The handler sees the same id among the request's headers.
    assert_eq!(res.text().await.unwrap(), id);
    // A client's own id is kept (headers named like it, or with it as their value, before
    // it do not confuse the console lines' id below).
    let mine = http1()
        .get(node.url("/"))
        .header("x-request-idx", "decoy-1")
        .header("x-note", "x-request-id")
        .header("x-request-id", "client-chosen-1")
        .send()
        .await
        .unwrap();
    assert_eq!(mine.headers()["x-request-id"], "client-chosen-1");
    assert_eq!(mine.text().await.unwrap(), "client-chosen-1");
    // One that is not sane is replaced, for the handler too (not added beside it).
    let replaced = http1()
        .get(node.url("/"))
        .header("x-request-id", "not a sane id")
        .send()
        .await
        .unwrap();
    let new_id = replaced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(new_id.len(), 16, "{new_id}");
    assert_eq!(replaced.text().await.unwrap(), new_id);

    let line = node.wait_for_stderr(
        &format!("\"request_id\":\"{id}\",\"app\""),
        Duration::from_secs(10),
    );
    let request: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(request["target"], "outpost::request");
    assert_eq!(request["app"], "site");
    assert_eq!(request["status"], 200);
    assert_eq!(request["path"], "/");
    let requests = node
        .stderr()
        .iter()
        .filter(|l| l.contains("outpost::request") && l.contains(&id))
        .count();
    assert_eq!(requests, 1, "one line per request");
    // The tenant's console lines carry the request's id, before and after an await.
    let deadline = Instant::now() + Duration::from_secs(10);
    let console = loop {
        let lines: Vec<serde_json::Value> = node
            .stdout()
            .iter()
            .chain(node.stderr().iter())
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| {
                v["target"] == "outpost::console" && v["request_id"] == id.as_str()
            })
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let messages: Vec<&str> = console
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["inside the handler", "after an await"],
        "{console:?}"
    );
    assert_eq!(console[1]["level"], "WARN");
    assert_eq!(console[0]["app"], "site");
    let deadline = Instant::now() + Duration::from_secs(10);
    let theirs = loop {
        let count = node
            .stdout()
            .iter()
            .chain(node.stderr().iter())
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| {
                v["target"] == "outpost::console" && v["request_id"] == "client-chosen-1"
            })
            .count();
        if count >= 2 || Instant::now() > deadline {
            break count;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        theirs, 2,
        "the client's id on both console lines of its request"
    );
}

#[tokio::test]
async fn a_pop_reports_readiness_versions_and_origin_reachability() {
    // The PoP starts before its origin exists: not ready.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin_url = format!("http://127.0.0.1:{port}");
    let pop_data = tempfile::tempdir().unwrap();
    let mut pop = Node::pop(
        &origin_url,
        pop_data.path(),
        "p1",
        POP,
        &["--admin", "127.0.0.1:0"],
    );
    let admin = pop.admin_url();
    let ready = |admin: String| async move {
        http1()
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready(admin.clone()).await, 503);
    assert_eq!(
        http1()
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The origin comes up on that address: after the first sync the PoP is ready.
    let origin_data = tempfile::tempdir().unwrap();
    let mut origin_command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    origin_command
        .arg("origin")
        .arg("--data")
        .arg(origin_data.path())
        .env("OUTPOST_DEPLOY_TOKEN", DEPLOY)
        .env("OUTPOST_POP_TOKEN", POP);
    let origin = Node::spawn_on(origin_command, &format!("127.0.0.1:{port}"));
    let site = deploy_site(&origin, "return new Response('hi');");
    let id = outpost_bundle::load_app(site.path()).unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape(&admin).await;
        let version = format!(r#"outpost_app_version_info{{app="site",version="{id}"}}"#);
        if ready(admin.clone()).await == 200 && sample(&metrics, &version) == 1.0 {
            assert_eq!(sample(&metrics, "outpost_origin_reachable"), 1.0);
            assert!(sample(&metrics, "outpost_sync_lag_seconds") < 60.0);
            break;
        }
        assert!(Instant::now() < deadline, "{metrics:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The origin goes away: the PoP says so, and stays ready (it serves what it has).
    drop(origin);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = scrape(&admin).await;
        if sample(&metrics, "outpost_origin_reachable") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready(admin.clone()).await, 200);
}

#[tokio::test]
async fn outpost_tail_follows_one_app_and_a_slow_follower_is_dropped() {
    let apps = app_dir(&[
        ("site/outpost.toml", "name = \"site\"\n"),
        (
            "site/src/index.js",
            "export default { async fetch(request) {\n\
               const n = Number(new URL(request.url).searchParams.get('n') ?? 1);\n\
               for (let i = 0; i < n; i++) console.log(`tail-marker ${i}`);\n\
               console.warn('a warning');\n\
               return new Response('ok');\n\
             } };\n",
        ),
        ("other/outpost.toml", "name = \"other\"\n"),
        (
            "other/src/index.js",
            "export default { fetch() { console.log('not for site'); return new Response('x'); } };\n",
        ),
    ]);
    let mut node = Node::start(apps.path(), &["--admin", "127.0.0.1:0"]);
    let admin = node.admin_url();
    let mut tail = Command::new(env!("CARGO_BIN_EXE_outpost"));
    tail.args(["tail", "site", "--pop", &admin, "--format", "json"]);
    let mut follower = Node::spawn_plain(tail);
    follower.wait_for_stderr("following site", Duration::from_secs(20));

    let res = http1()
        .get(node.url("/"))
        .header("host", "site.localhost")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    http1()
        .get(node.url("/"))
        .header("host", "other.localhost")
        .send()
        .await
        .unwrap();
    let line = follower.wait_for_stdout("\"type\":\"request\"", Duration::from_secs(10));
    let request: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (request["app"].as_str(), request["status"].as_u64()),
        (Some("site"), Some(200))
    );
    assert_eq!(request["request_id"], id.as_str());
    let lines = follower.stdout();
    let console: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "console")
        .collect();
    assert_eq!(console.len(), 2, "{lines:?}");
    assert_eq!(console[0]["message"], "tail-marker 0");
    assert_eq!(console[0]["request_id"], id.as_str());
    assert_eq!(console[1]["level"], "warn");
    assert!(
        !lines.iter().any(|l| l.contains("not for site")),
        "{lines:?}"
    );

    // Filters: warnings and up only.
    let warn_only = http1()
        .get(format!("{admin}/tail?app=site&level=warn"))
        .send()
        .await
        .unwrap();
    http1()
        .get(node.url("/"))
        .header("host", "site.localhost")
        .send()
        .await
        .unwrap();
    let mut warn_stream = warn_only.bytes_stream();
    use futures::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(10), warn_stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["level"], "warn", "{first}");

    // A follower that does not read falls behind and is dropped; the node goes on.
    let slow = http1()
        .get(format!("{admin}/tail?app=site"))
        .send()
        .await
        .unwrap();
    for _ in 0..20 {
        let res = http1()
            .get(node.url("/?n=5000"))
            .header("host", "site.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let everything = tokio::time::timeout(Duration::from_secs(60), slow.bytes())
        .await
        .expect("the slow follower's stream ended")
        .unwrap();
    let last = everything
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap();
    let last: serde_json::Value = serde_json::from_slice(last).unwrap();
    assert_eq!(last["type"], "dropped", "{last}");
    assert_eq!(get_host(&node, &http1(), "site.localhost").await, 200);
}

#[tokio::test]
async fn the_origin_counts_api_calls_and_feed_followers() {
    let origin_data = tempfile::tempdir().unwrap();
    let mut origin = Node::origin_with_tokens(origin_data.path(), &["--admin", "127.0.0.1:0"]);
    let admin = origin.admin_url();
    let site = deploy_site(&origin, "return new Response('hi');");
    let (ok, _, _) = common::outpost(
        &[
            "deploy",
            site.path().to_str().unwrap(),
            "--origin",
            &origin.url,
        ],
        Some("wrong"),
    );
    assert!(!ok);
    let pop_data = tempfile::tempdir().unwrap();
    let _pop = Node::pop(&origin.url, pop_data.path(), "p", POP, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape(&admin).await;
        if sample(&metrics, "outpost_origin_feed_followers") >= 1.0 {
            assert_eq!(
                sample(
                    &metrics,
                    r#"outpost_origin_requests_total{call="POST /v1/versions",status="2xx"}"#
                ),
                1.0
            );
            assert_eq!(
                sample(
                    &metrics,
                    r#"outpost_origin_requests_total{call="PUT /v1/apps/{app}/active",status="2xx"}"#
                ),
                1.0
            );
            assert!(
                sample(
                    &metrics,
                    r#"outpost_origin_requests_total{call="HEAD /v1/blobs/{sha256}",status="4xx"}"#
                ) >= 1.0,
                "the refused deploy: {metrics:?}"
            );
            assert_eq!(sample(&metrics, "outpost_origin_feed_head"), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "{metrics:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = http1().get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn outpost_tail_through_the_origin_follows_every_pop() {
    let origin_data = tempfile::tempdir().unwrap();
    let origin = Node::origin_with_tokens(origin_data.path(), &[]);
    let _site = deploy_site(
        &origin,
        "console.log('seen at', new URL(request.url).pathname); return new Response('hi');",
    );
    let data: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let pops: Vec<Node> = ["east", "west"]
        .iter()
        .zip(&data)
        .map(|(name, d)| {
            Node::pop(
                &origin.url,
                d.path(),
                name,
                POP,
                &["--admin", "127.0.0.1:0"],
            )
        })
        .collect();
    // Both PoPs serve the app (so both have followed the feed and told the origin of
    // their admin listeners).
    for pop in &pops {
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::get(pop, "/").await.0 != 200 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut tail = Command::new(env!("CARGO_BIN_EXE_outpost"));
    tail.args(["tail", "site", "--origin", &origin.url, "--format", "json"])
        .env("OUTPOST_TOKEN", DEPLOY);
    let follower = Node::spawn_plain(tail);
    // It follows each PoP the origin knows.
    let deadline = Instant::now() + Duration::from_secs(20);
    while follower
        .stderr()
        .iter()
        .filter(|l| l.contains("following site"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:?}", follower.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    for (pop, path) in pops.iter().zip(["/from-east", "/from-west"]) {
        assert_eq!(common::get(pop, path).await.0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<serde_json::Value> = follower
            .stdout()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["type"] == "console")
            .collect();
        let east = seen
            .iter()
            .any(|v| v["pop"] == "east" && v["message"] == "seen at /from-east");
        let west = seen
            .iter()
            .any(|v| v["pop"] == "west" && v["message"] == "seen at /from-west");
        if east && west {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn outbound_fetch_carries_the_requests_trace_context() {
    // An upstream on loopback that answers with the trace headers it received.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .map_or("none".to_string(), |v| v.to_str().unwrap().to_string())
                        };
                        let seen = format!("{}|{}", header("traceparent"), header("tracestate"));
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(seen)),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let site = app_dir(&[
        (
            "outpost.toml",
            &format!("name = \"site\"\n[vars]\nUPSTREAM = \"http://127.0.0.1:{port}/\"\n"),
        ),
        (
            "src/index.js",
            "export default { async fetch(request, env) {\n\
               const own = new URL(request.url).pathname === '/own';\n\
               const init = own ? { headers: { traceparent: 'the-apps-own' } } : undefined;\n\
               const answer = await fetch(env.UPSTREAM, init);\n\
               return new Response(await answer.text());\n\
             } };\n",
        ),
    ]);
    let node = Node::start(site.path(), &[]);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = |path: &str| {
        http1()
            .get(node.url(path))
            .header("traceparent", parent)
            .header("tracestate", "vendor=1")
            .send()
    };
    let body = traced("/").await.unwrap().text().await.unwrap();
    assert_eq!(body, format!("{parent}|vendor=1"));
    // The app's own header wins; a request without trace context passes none on.
    let body = traced("/own").await.unwrap().text().await.unwrap();
    assert_eq!(body, "the-apps-own|none");
    assert_eq!(common::get(&node, "/").await.1, "none|none");
}

/// One span as the test's OTLP receiver decoded it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    service: String,
}

/// An OTLP/HTTP receiver on loopback (`POST /v1/traces`, protobuf), which also answers any
/// other path as an upstream that echoes the `traceparent` it got.
async fn otlp_receiver() -> (u16, tokio::sync::mpsc::UnboundedReceiver<ReceivedSpan>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let sender = sender.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let path = request.uri().path().to_string();
                            let traceparent = request
                                .headers()
                                .get("traceparent")
                                .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            if path == "/v1/traces" {
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                for resource in export.resource_spans {
                                    let service = resource
                                        .resource
                                        .iter()
                                        .flat_map(|r| r.attributes.iter())
                                        .find(|a| a.key == "service.name")
                                        .map(|a| format!("{:?}", a.value))
                                        .unwrap_or_default();
                                    for scope in resource.scope_spans {
                                        for span in scope.spans {
                                            let attributes = span
                                                .attributes
                                                .iter()
                                                .map(|a| (a.key.clone(), format!("{:?}", a.value)))
                                                .collect();
                                            let _ = sender.send(ReceivedSpan {
                                                name: span.name.clone(),
                                                trace_id: hex(&span.trace_id),
                                                span_id: hex(&span.span_id),
                                                parent_span_id: hex(&span.parent_span_id),
                                                attributes,
                                                service: service.clone(),
                                            });
                                        }
                                    }
                                }
                                return Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::new()),
                                ));
                            }
                            Ok(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(traceparent),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, receiver)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Spans from `receiver` until `count` of them came, or 20 s passed.
async fn spans(
    receiver: &mut tokio::sync::mpsc::UnboundedReceiver<ReceivedSpan>,
    count: usize,
) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while spans.len() < count {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(span)) => spans.push(span),
            _ => break,
        }
    }
    spans
}

#[tokio::test]
async fn a_traced_request_reaches_an_otlp_receiver_with_its_spans() {
    let (port, mut receiver) = otlp_receiver().await;
    let site = app_dir(&[
        (
            "outpost.toml",
            &format!(
                "name = \"traced\"\n[vars]\nUPSTREAM = \"http://127.0.0.1:{port}/upstream\"\n"
            ),
        ),
        (
            "src/index.js",
            "export default { async fetch(request, env) {\n\
               const answer = await fetch(env.UPSTREAM);\n\
               return new Response(await answer.text());\n\
             } };\n",
        ),
    ]);
    let otlp = format!("http://127.0.0.1:{port}");
    let mut node = Node::start(site.path(), &["--otlp", &otlp, "--spares", "0"]);
    node.keep(site);
    // A caller's trace: the request joins it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let response = http1()
        .get(node.url("/"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .send()
        .await
        .unwrap();
    // The upstream saw the trace, its parent the node's handler span.
    let forwarded = response.text().await.unwrap();
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts.len(), 4, "{forwarded}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace, "01"),
        "{forwarded}"
    );

    let received = spans(&mut receiver, 4).await;
    let named = |name: &str| {
        received
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name:?} span in {received:#?}"))
            .clone()
    };
    let server = named("GET");
    let start = named("isolate start");
    let handler = named("handler");
    let fetch = named("fetch GET");
    for span in [&server, &start, &handler, &fetch] {
        assert_eq!(span.trace_id, trace, "{span:?}");
        assert!(span.service.contains("outpost-dev"), "{span:?}");
    }
    assert_eq!(server.parent_span_id, caller);
    assert_eq!(start.parent_span_id, server.span_id);
    assert_eq!(handler.parent_span_id, server.span_id);
    assert_eq!(fetch.parent_span_id, handler.span_id);
    assert_eq!(
        parts[2], handler.span_id,
        "the upstream's parent is the handler span"
    );
    assert!(server.attributes["http.response.status_code"].contains("200"));
    assert!(server.attributes["outpost.app"].contains("traced"));
    assert!(fetch.attributes["url.full"].contains("/upstream"));

    // A caller that does not sample: no spans, and the decision travels on.
    let response = http1()
        .get(node.url("/"))
        .header("traceparent", format!("00-{trace}-{caller}-00"))
        .send()
        .await
        .unwrap();
    assert!(response.text().await.unwrap().ends_with("-00"));
    // Without a caller: a new trace of the node's own (sampled at 1.0 by default).
    let response = http1().get(node.url("/")).send().await.unwrap();
    let own = response.text().await.unwrap();
    let own_trace = own.split('-').nth(1).unwrap().to_string();
    assert_ne!(own_trace, trace);
    let next = spans(&mut receiver, 3).await;
    assert!(
        next.iter().all(|s| s.trace_id == own_trace),
        "spans of the unsampled request arrived: {next:#?}"
    );
    assert!(next
        .iter()
        .any(|s| s.name == "GET" && s.parent_span_id.is_empty()));
}

#[tokio::test]
async fn requests_waiting_for_a_busy_isolate_show_as_queued() {
    // One request at a time per isolate, one worker: the others wait in its queue.
    let site = app_dir(&[
        (
            "outpost.toml",
            "name = \"busy\"\n[limits]\nconcurrency = 1\n",
        ),
        (
            "src/index.js",
            "export default { async fetch() {\n\
               await new Promise((r) => setTimeout(r, 1500));\n\
               return new Response('done');\n\
             } };\n",
        ),
    ]);
    let mut node = Node::start(site.path(), &["--workers", "1", "--admin", "127.0.0.1:0"]);
    node.keep(site);
    let admin = node.admin_url();
    let url = node.url("/");
    let requests: Vec<_> = (0..3)
        .map(|i| {
            // Distinct URLs: the cache would otherwise have them wait for the first.
            let url = format!("{url}?n={i}");
            tokio::spawn(async move { http1().get(url).send().await.unwrap().status() })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut peak = 0.0f64;
    while peak < 2.0 && Instant::now() < deadline {
        peak = peak.max(sample(&scrape(&admin).await, "outpost_requests_queued"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        peak, 2.0,
        "two requests should have waited behind the first"
    );
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        sample(&scrape(&admin).await, "outpost_requests_queued"),
        0.0
    );
}
