//! Many apps on one node: routing by host, separate state per app, the isolate budget,
//! eviction and cold starts, scale-out of a busy app.

mod common;

use std::time::{Duration, Instant};

use common::{app_dir, http1, isolates, Node};

/// An app that counts its requests in module state and says who it is.
fn counter(name: &str, routes: &[&str]) -> Vec<(String, String)> {
    let routes: Vec<String> = routes.iter().map(|r| format!("{r:?}")).collect();
    vec![
        (
            format!("{name}/outpost.toml"),
            format!("name = \"{name}\"\nroutes = [{}]\n", routes.join(", ")),
        ),
        (
            format!("{name}/src/index.js"),
            format!(
                "let n = 0;\nexport default {{ fetch(request) {{ n++; return new Response(`{name} ${{n}} ${{new URL(request.url).pathname}}`); }} }};\n"
            ),
        ),
    ]
}

fn apps(list: &[Vec<(String, String)>]) -> tempfile::TempDir {
    let files: Vec<(&str, &str)> = list
        .iter()
        .flatten()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    app_dir(&files)
}

/// GETs `path` with a Host header over HTTP/1.1: status, body and headers.
async fn get_host(
    node: &Node,
    host: &str,
    path: &str,
) -> (u16, String, reqwest::header::HeaderMap) {
    let res = http1()
        .get(node.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, res.text().await.unwrap(), headers)
}

async fn body_for(node: &Node, host: &str, path: &str) -> String {
    let (status, body, _) = get_host(node, host, path).await;
    assert_eq!(status, 200, "{host}{path}: {body}");
    body
}

#[tokio::test]
async fn two_apps_interleaving_on_one_thread_keep_separate_state() {
    let dir = apps(&[counter("a", &[]), counter("b", &[])]);
    let node = Node::start(dir.path(), &["--workers", "1"]);
    for round in 1..=3 {
        assert_eq!(
            body_for(&node, "a.localhost", "/").await,
            format!("a {round} /")
        );
        assert_eq!(
            body_for(&node, "b.localhost", "/").await,
            format!("b {round} /")
        );
    }
}

/// WebCrypto keeps per-thread state in deno_crypto (the symbols every new CryptoKey is
/// branded with). Apps taking turns on one thread each make, import and use keys, including
/// across an await that another app's request runs during, a tenant calls
/// `Crypto.registerSymbols` with symbols of its own, and the node keeps serving all of them.
#[tokio::test]
async fn apps_taking_turns_with_webcrypto_keys_on_one_thread() {
    let crypto_app = |name: &str| {
        vec![
            (format!("{name}/outpost.toml"), format!("name = \"{name}\"\n")),
            (
                format!("{name}/src/index.js"),
                r#"
const data = new TextEncoder().encode("signed by me");
export default {
  async fetch(request) {
    if (new URL(request.url).pathname === "/rebrand") {
      Crypto.registerSymbols(Symbol("mine"), Symbol("also mine"));
    }
    const raw = crypto.getRandomValues(new Uint8Array(32));
    const hmac = await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const sig = await crypto.subtle.sign("HMAC", hmac, data);
    const ed = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
    const jwk = await crypto.subtle.exportKey("jwk", ed.publicKey);
    const pub = await crypto.subtle.importKey("jwk", jwk, { name: "Ed25519" }, false, ["verify"]);
    const edSig = await crypto.subtle.sign("Ed25519", ed.privateKey, data);
    const ok = await crypto.subtle.verify("HMAC", hmac, sig, data) &&
      await crypto.subtle.verify("Ed25519", pub, edSig, data) &&
      hmac instanceof CryptoKey && pub.type === "public";
    return new Response(ok ? "verified" : "not verified");
  },
};
"#
                .to_string(),
            ),
        ]
    };
    let dir = apps(&[crypto_app("a"), crypto_app("b"), crypto_app("c")]);
    let node = Node::start(dir.path(), &["--workers", "1"]);
    for path in ["/", "/rebrand", "/"] {
        let requests = ["a", "b", "c", "a", "b", "c"].map(|app| {
            let host = format!("{app}.localhost");
            let node = &node;
            async move { get_host(node, &host, path).await }
        });
        for (status, body, _) in futures::future::join_all(requests).await {
            // What a tenant's own rebranded keys do is its business; every other request
            // verifies, and the node answers all.
            if path != "/rebrand" {
                assert_eq!((status, body.as_str()), (200, "verified"));
            }
        }
    }
}

#[tokio::test]
async fn hosts_route_to_the_most_specific_app_and_unknown_hosts_get_404() {
    let dir = apps(&[
        counter("site", &["example.com/*"]),
        counter("api", &["example.com/v1/*", "api.example.com/*"]),
        counter("subs", &["*.example.com/*"]),
    ]);
    let node = Node::start(dir.path(), &[]);
    assert!(body_for(&node, "example.com", "/about")
        .await
        .starts_with("site "));
    assert!(body_for(&node, "example.com", "/v1/users")
        .await
        .starts_with("api "));
    assert!(body_for(&node, "api.example.com", "/")
        .await
        .starts_with("api "));
    assert!(body_for(&node, "www.example.com", "/")
        .await
        .starts_with("subs "));
    assert!(body_for(&node, "site.localhost", "/")
        .await
        .starts_with("site "));
    let (status, body, headers) = get_host(&node, "unknown.example.org", "/").await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-outpost-error"], "no-route");
    for name in ["site", "api", "subs"] {
        assert!(!body.contains(name), "the 404 names no app: {body}");
    }
}

#[tokio::test]
async fn duplicate_routes_are_a_load_error_naming_both_apps() {
    let dir = apps(&[
        counter("first", &["dup.example/*"]),
        counter("second", &["dup.example/*"]),
    ]);
    let mut node = Node::start(dir.path(), &[]);
    let line = node.wait_for_stderr("claimed by both", Duration::from_secs(10));
    assert!(line.contains("first") && line.contains("second"), "{line}");
    assert!(body_for(&node, "dup.example", "/")
        .await
        .starts_with("first "));
}

#[tokio::test]
async fn fifty_apps_answer_under_a_budget_of_ten_isolates() {
    let list: Vec<_> = (0..50).map(|i| counter(&format!("app{i}"), &[])).collect();
    let dir = apps(&list);
    let mut node = Node::start(
        dir.path(),
        &[
            "--workers",
            "2",
            "--max-isolates",
            "10",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = node.admin_url();
    for round in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let url = node.url("/");
            tasks.push(tokio::spawn(async move {
                let res = http1()
                    .get(url)
                    .header("host", format!("app{i}.localhost"))
                    .send()
                    .await
                    .unwrap();
                (i, res.status().as_u16(), res.text().await.unwrap())
            }));
            if i % 5 == 4 {
                let stats = isolates(&admin).await;
                assert!(
                    stats["live"].as_u64().unwrap() <= 10,
                    "round {round}: {stats}"
                );
            }
        }
        for task in tasks {
            let (i, status, body) = task.await.unwrap();
            assert_eq!(status, 200, "app{i}: {body}");
            assert!(body.starts_with(&format!("app{i} ")), "app{i}: {body}");
        }
    }
    let stats = isolates(&admin).await;
    assert!(stats["peak"].as_u64().unwrap() <= 10, "{stats}");
    assert!(stats["live"].as_u64().unwrap() <= 10, "{stats}");
    assert!(stats["evicted"].as_u64().unwrap() >= 40, "{stats}");
}

#[tokio::test]
async fn an_evicted_app_comes_back_cold_and_correct() {
    let dir = apps(&[counter("sleepy", &[])]);
    let mut node = Node::start(
        dir.path(),
        &["--idle-timeout-secs", "1", "--admin", "127.0.0.1:0"],
    );
    let admin = node.admin_url();
    let (_, body, headers) = get_host(&node, "sleepy.localhost", "/").await;
    assert_eq!(body, "sleepy 1 /");
    let timing = headers["server-timing"].to_str().unwrap().to_string();
    assert!(
        timing.contains("cpu;dur=") && timing.contains("wall;dur="),
        "{timing}"
    );
    assert!(
        timing.contains("cold"),
        "the first request is cold: {timing}"
    );
    let (_, body, headers) = get_host(&node, "sleepy.localhost", "/").await;
    assert_eq!(body, "sleepy 2 /");
    assert!(!headers["server-timing"].to_str().unwrap().contains("cold"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while isolates(&admin).await["live"].as_u64().unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle isolate was never evicted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body, headers) = get_host(&node, "sleepy.localhost", "/").await;
    assert_eq!(body, "sleepy 1 /", "a new isolate, module state anew");
    assert!(headers["server-timing"].to_str().unwrap().contains("cold"));
}

#[tokio::test]
async fn a_busy_app_gets_isolates_on_other_workers() {
    let dir = app_dir(&[
        ("outpost.toml", "name = \"busy\"\n"),
        (
            "src/index.js",
            "const id = crypto.randomUUID();\nexport default { async fetch() { await new Promise((r) => setTimeout(r, 300)); return new Response(id); } };\n",
        ),
    ]);
    let mut node = Node::start(dir.path(), &["--workers", "2", "--admin", "127.0.0.1:0"]);
    let admin = node.admin_url();
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..24 {
            let url = node.url("/");
            tasks.push(tokio::spawn(async move {
                http1().get(url).send().await.unwrap().text().await.unwrap()
            }));
        }
        for task in tasks {
            ids.insert(task.await.unwrap());
        }
    }
    assert_eq!(ids.len(), 2, "two isolates answered: {ids:?}");
    let stats = isolates(&admin).await;
    let workers: std::collections::BTreeSet<u64> = stats["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "one isolate on each worker: {stats}");
}

#[tokio::test]
async fn a_short_error_detail_keeps_load_errors_in_the_log() {
    let dir = app_dir(&[
        ("outpost.toml", "name = \"broken\"\n"),
        (
            "src/index.js",
            "export default { fetch() { return new Response( } };\n",
        ),
    ]);
    let mut node = Node::start(dir.path(), &["--error-detail", "short"]);
    node.wait_for_stderr("cannot load the app", Duration::from_secs(10));
    let (status, body, _) = get_host(&node, "broken.localhost", "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("the node's log says why"), "{body}");
    assert!(
        !body.contains("index.js"),
        "no file:line for clients: {body}"
    );
}
