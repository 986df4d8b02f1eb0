//! Failures are contained: a throwing handler, a wrong return value, a promise that can never
//! settle, a broken module, malformed and oversized requests. Each gets a clear status and
//! message, and the node keeps serving.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{app, app_dir, get, http1, Node};

const HANDLER: &str = r#"
function fail(where) {
  throw new Error(`boom at ${where}`);
}

export default {
  async fetch(request) {
    const path = new URL(request.url).pathname;
    switch (path) {
      case "/throw":
        fail("throw");
      case "/throw-sync":
        return fail("sync");
      case "/reject":
        await new Promise((resolve) => setTimeout(resolve, 5));
        throw new TypeError("late rejection");
      case "/throw-string":
        throw "just a string";
      case "/undefined":
        return;
      case "/string":
        return "not a response";
      case "/object":
        return { status: 200 };
      case "/never":
        return new Promise(() => {});
      case "/timer-throws":
        setTimeout(() => { throw new Error("timer exploded"); }, 1);
        return new Response("answered before the timer");
      case "/unhandled":
        Promise.reject(new Error("nobody listens"));
        return new Response("answered");
      case "/error-response":
        return Response.error();
      case "/slow":
        await new Promise((resolve) => setTimeout(resolve, 3000));
        return new Response("too late");
      default:
        return new Response("fine");
    }
  },
};
"#;

#[tokio::test]
async fn uncaught_exceptions_are_500_with_the_stack_on_the_terminal() {
    let dir = app("errors", HANDLER);
    let mut node = Node::start(dir.path(), &[]);
    let (status, body) = get(&node, "/throw").await;
    assert_eq!(status, 500);
    assert!(body.contains("threw an exception"), "{body}");
    assert!(
        !body.contains("boom"),
        "exception details stay in the log: {body}"
    );
    let log = node.stderr_from("boom at throw", Duration::from_secs(5));
    assert!(
        log.contains("[errors req=") && log.contains("] Uncaught Error: boom at throw"),
        "{log}"
    );
    assert!(
        log.contains("src/index.js:3:"),
        "the stack names the tenant's file:line: {log}"
    );

    for (path, marker) in [
        ("/throw-sync", "boom at sync"),
        ("/reject", "TypeError: late rejection"),
        ("/throw-string", "just a string"),
    ] {
        let (status, _) = get(&node, path).await;
        assert_eq!(status, 500, "{path}");
        node.wait_for_stderr(marker, Duration::from_secs(5));
    }
    assert_eq!(get(&node, "/").await, (200, "fine".to_string()));
}

#[tokio::test]
async fn non_response_return_values_are_500_saying_so() {
    let dir = app("errors", HANDLER);
    let node = Node::start(dir.path(), &[]);
    for (path, what) in [
        ("/undefined", "undefined"),
        ("/string", "a string"),
        ("/object", "an Object object"),
    ] {
        let (status, body) = get(&node, path).await;
        assert_eq!(status, 500, "{path}");
        assert!(
            body.contains(&format!("returned {what} instead of a Response")),
            "{path}: {body}"
        );
    }
    let (status, body) = get(&node, "/error-response").await;
    assert_eq!(status, 500);
    assert!(body.contains("Response.error()"), "{body}");
    assert_eq!(get(&node, "/").await, (200, "fine".to_string()));
}

#[tokio::test]
async fn a_promise_that_can_never_settle_fails_fast() {
    let dir = app("errors", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let (status, body) = get(&node, "/never").await;
    assert_eq!(status, 500);
    assert!(body.contains("will never"), "{body}");
    assert_eq!(get(&node, "/").await, (200, "fine".to_string()));
}

#[tokio::test]
async fn errors_outside_requests_are_logged_and_the_isolate_keeps_serving() {
    let dir = app("errors", HANDLER);
    let mut node = Node::start(dir.path(), &[]);
    assert_eq!(
        get(&node, "/timer-throws").await,
        (200, "answered before the timer".to_string())
    );
    node.wait_for_stderr("timer exploded", Duration::from_secs(5));
    assert_eq!(
        get(&node, "/unhandled").await,
        (200, "answered".to_string())
    );
    node.wait_for_stderr(
        "Uncaught (in promise) Error: nobody listens",
        Duration::from_secs(5),
    );
    assert_eq!(get(&node, "/").await, (200, "fine".to_string()));
}

#[tokio::test]
async fn service_worker_syntax() {
    let dir = app(
        "sw",
        r#"addEventListener("fetch", (event) => {
             const url = new URL(event.request.url);
             if (url.pathname === "/none") return;
             event.respondWith(new Response(`sw ${event.request.method} ${url.pathname}`));
           });"#,
    );
    let node = Node::start(dir.path(), &[]);
    assert_eq!(get(&node, "/x").await, (200, "sw GET /x".to_string()));
    let (status, body) = get(&node, "/none").await;
    assert_eq!(status, 500);
    assert!(body.contains("respondWith"), "{body}");
}

#[tokio::test]
async fn a_broken_module_is_reported_with_file_and_line() {
    let dir = app(
        "broken",
        "export default {\n  fetch() {\n    return new Response(;\n  }\n};\n",
    );
    let mut node = Node::start(dir.path(), &[]);
    let log = node.stderr_from("cannot load the app", Duration::from_secs(10));
    assert!(log.contains("SyntaxError"), "{log}");
    assert!(log.contains("src/index.js:3"), "{log}");
    let (status, body) = get(&node, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("SyntaxError"), "{body}");
}

#[tokio::test]
async fn a_module_without_a_handler_is_explained() {
    let dir = app("nohandler", "export const x = 1;\n");
    let mut node = Node::start(dir.path(), &[]);
    let log = node.stderr_from("cannot load the app", Duration::from_secs(10));
    assert!(log.contains("export default"), "{log}");
    let dir = app_dir(&[("outpost.toml", "name = \"x\"\nmian = \"typo.js\"\n")]);
    let mut node = Node::start(dir.path(), &[]);
    let log = node.stderr_from("cannot load the app", Duration::from_secs(10));
    assert!(log.contains("mian"), "{log}");
}

#[tokio::test]
async fn imports_outside_the_app_are_refused() {
    let dir = app(
        "escape",
        "import x from \"node:fs\";\nexport default { fetch() { return new Response('x'); } };\n",
    );
    let mut node = Node::start(dir.path(), &[]);
    let log = node.stderr_from("cannot load the app", Duration::from_secs(10));
    assert!(log.contains("node:fs"), "{log}");
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let dir = app("ok", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let addr = node.url.trim_start_matches("http://").to_string();
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
    ] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(raw).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} → {text}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(get(&node, "/").await, (200, "fine".to_string()));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let dir = app("ok", HANDLER);
    let node = Node::start(dir.path(), &["--max-body-bytes", "1000"]);
    let res = http1()
        .post(node.url("/"))
        .body(vec![0u8; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let res = http1()
        .post(node.url("/"))
        .body(vec![0u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn slow_handlers_get_504_after_the_response_timeout() {
    let dir = app("slow", HANDLER);
    let node = Node::start(dir.path(), &["--timeout-ms", "1000"]);
    let res = http1().get(node.url("/slow")).send().await.unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(res.headers()["x-outpost-error"], "timeout");
    assert_eq!(get(&node, "/").await, (200, "fine".to_string()));
}
