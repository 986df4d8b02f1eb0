//! Every Web API the runtime promises, exercised from inside a handler
//! (tests/fixtures/web-apis/src/index.js), plus the console reaching the terminal.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{http1, Node};
use serde_json::{Map, Value};

const EXPECTED: &[&str] = &[
    "fetch_outbound",
    "fetch_file_is_denied",
    "request_response_headers",
    "incoming_request",
    "form_data",
    "url",
    "url_pattern",
    "text_encoding",
    "streams",
    "blob_file",
    "base64",
    "structured_clone",
    "crypto_errors",
    "crypto_random",
    "crypto_subtle_digest",
    "crypto_subtle_hmac",
    "crypto_subtle_aes_gcm",
    "abort",
    "event_target",
    "timers",
    "performance",
    "console",
    "compression",
    "webassembly",
    "env",
    "wait_until",
    "no_host_access",
    "report_error",
    "global_scope",
];

#[tokio::test]
async fn every_web_api_works_in_a_handler() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/web-apis");
    let mut node = Node::start(&fixture, &[]);
    let res = http1()
        .get(node.url("/checks"))
        .header("x-probe", "42")
        // Headers cross into the isolate as one string, split when read: repeated, empty
        // and Latin-1 values come out as sent.
        .header("x-twice", "1")
        .header("x-twice", "2")
        .header("x-empty", "")
        .header(
            "x-latin1",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let results: Map<String, Value> = res.json().await.unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, v)| v.as_str() != Some("ok"))
        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n\n"));
    for name in EXPECTED {
        assert!(results.contains_key(*name), "check {name} did not run");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = http1()
        .get(node.url("/wait-until-result"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "ran after the response");
    let line = node.wait_for_stdout("console-marker", Duration::from_secs(5));
    // Each line names its app and the request it ran for (waitUntil work included).
    assert!(line.starts_with("[web-apis req="), "{line}");
    assert!(line.contains("] console-marker"), "{line}");
    let line = node.wait_for_stderr("console-error-marker", Duration::from_secs(5));
    assert!(line.starts_with("[web-apis req="), "{line}");
}

/// `location` in outpost.toml gives the scope a WorkerLocation, and relative URLs resolve
/// against it (Deno's `--location`).
#[tokio::test]
async fn an_app_with_a_location_resolves_relative_urls_against_it() {
    let app = common::app_dir(&[
        (
            "outpost.toml",
            "name = \"located\"\nlocation = \"https://app.example.com/docs/index.html?x=1\"\n",
        ),
        (
            "src/index.js",
            r#"
const results = {};
function check(name, fn) {
  try { results[name] = fn(); } catch (e) { results[name] = `threw ${e.name}: ${e.message}`; }
}
check("href", () => location.href);
check("origin", () => location.origin);
check("pathname", () => location.pathname);
check("tag", () => Object.prototype.toString.call(location));
check("is_worker_location", () => location instanceof WorkerLocation);
check("request", () => new Request("../api/items?q=1").url);
check("redirect", () => Response.redirect("/moved").headers.get("location"));
check("blob", () => URL.createObjectURL(new Blob(["x"])).startsWith("blob:https://app.example.com/"));
export default { fetch() { return Response.json(results); } };
"#,
        ),
    ]);
    let node = Node::start(app.path(), &[]);
    let res = http1().get(node.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let results: Value = res.json().await.unwrap();
    let want = serde_json::json!({
        "href": "https://app.example.com/docs/index.html?x=1",
        "origin": "https://app.example.com",
        "pathname": "/docs/index.html",
        "tag": "[object WorkerLocation]",
        "is_worker_location": true,
        "request": "https://app.example.com/api/items?q=1",
        "redirect": "https://app.example.com/moved",
        "blob": true,
    });
    assert_eq!(results, want);
}

/// `request.method` is the method as sent: the common ones (which the host passes by
/// number), an extension method, and a lower-case `patch` (which Fetch leaves as it is).
#[tokio::test]
async fn every_method_reaches_the_handler_as_sent() {
    let app = common::app(
        "methods",
        r#"export default {
             async fetch(request) {
               const body = await request.text();
               return new Response(`${request.method} ${body.length}`);
             },
           };"#,
    );
    let node = Node::start(app.path(), &[]);
    for method in [
        "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "patch",
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = if method == reqwest::Method::GET {
            ""
        } else {
            "abc"
        };
        let res = http1()
            .request(method.clone(), node.url("/"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{method}");
        assert_eq!(
            res.text().await.unwrap(),
            format!("{method} {}", body.len()),
            "{method}"
        );
    }
    let head = http1().head(node.url("/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    // The length of what the handler answered (reqwest's `content_length()` is the size of
    // the body it received, none for a HEAD).
    assert_eq!(head.headers()[reqwest::header::CONTENT_LENGTH], "6");
}

/// Text bodies reach the client as UTF-8 whatever form V8 holds them in (one-byte Latin-1
/// strings, two-byte strings, concatenations, long ones), before and after V8 optimizes the
/// dispatch code, and before and after the isolate's 1,000th request (from which the
/// dispatch code sends them through the op's fast-call function, `FAST_OPS_AFTER` in
/// js/20_dispatch.js); `Response.json`'s content type crosses beside them.
#[tokio::test]
async fn text_bodies_arrive_as_utf8_in_every_string_form() {
    let app = common::app(
        "texts",
        r#"const long = "é".repeat(5000);
           export default {
             fetch(request) {
               const path = new URL(request.url).pathname;
               if (path === "/latin1") return new Response("café crème");
               if (path === "/two-byte") return new Response("snow ☃ ✓ 😀");
               if (path === "/joined") return new Response("n=" + path.length + " é");
               if (path === "/long") return new Response(long);
               return Response.json({ s: "é☃" });
             },
           };"#,
    );
    let node = Node::start(app.path(), &[]);
    let client = http1();
    let long = "é".repeat(5000);
    let cases: [(&str, &str, &str); 5] = [
        ("/latin1", "café crème", "text/plain;charset=UTF-8"),
        ("/two-byte", "snow ☃ ✓ 😀", "text/plain;charset=UTF-8"),
        ("/joined", "n=7 é", "text/plain;charset=UTF-8"),
        ("/long", &long, "text/plain;charset=UTF-8"),
        ("/json", r#"{"s":"é☃"}"#, "application/json"),
    ];
    // Enough rounds for V8 to optimize the dispatch code, on both sides of the switch to
    // the fast-call function (2,000 requests).
    for round in 0..400 {
        for (path, body, content_type) in &cases {
            let res = client.get(node.url(path)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{path} in round {round}");
            assert_eq!(
                res.headers()[reqwest::header::CONTENT_TYPE],
                *content_type,
                "{path} in round {round}"
            );
            assert_eq!(
                res.bytes().await.unwrap(),
                body.as_bytes(),
                "{path} in round {round}"
            );
        }
    }
}
