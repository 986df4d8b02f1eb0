//! Every example answers as its README says, over HTTP/1.1 and cleartext HTTP/2.

mod common;

use std::time::{Duration, Instant};

use common::{get_json, http1, http2, Node};
use serde_json::{json, Value};

#[tokio::test]
async fn hello_over_http1_and_http2() {
    let node = Node::example("hello");
    for client in [http1(), http2()] {
        let res = client.get(node.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/plain;charset=UTF-8");
        assert_eq!(res.text().await.unwrap(), "hello from the edge\n");
    }
    let res = http2().get(node.url("/")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn hello_with_curl() {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .expect("this test needs curl (.ci/run installs it: apt-get install curl)");
    let node = Node::example("hello");
    for flags in [&["-s"][..], &["-s", "--http2-prior-knowledge"][..]] {
        let out = std::process::Command::new("curl")
            .args(flags)
            .arg(node.url("/"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from the edge\n"
        );
    }
}

#[tokio::test]
async fn json_api_routes_and_validates() {
    let node = Node::example("json-api");
    let client = http1();
    let index = get_json(&node, "/").await;
    assert_eq!(index["name"], "json-api");
    assert_eq!(index["version"], "1", "env.API_VERSION from [vars]");

    let res = client
        .post(node.url("/todos"))
        .body(r#"{"title":"write docs"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], "/todos/1");
    assert_eq!(res.headers()["content-type"], "application/json");
    let todo: Value = res.json().await.unwrap();
    assert_eq!(todo, json!({"id": 1, "title": "write docs", "done": false}));

    let got = get_json(&node, "/todos/1").await;
    assert_eq!(got, todo);
    let all = get_json(&node, "/todos").await;
    assert_eq!(all, json!([todo]));

    let res = client
        .post(node.url("/todos"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = client
        .post(node.url("/todos"))
        .body(r#"{"title":""}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    let res = client.delete(node.url("/todos/1")).send().await.unwrap();
    assert_eq!(res.status(), 204);
    let res = client.get(node.url("/todos/1")).send().await.unwrap();
    assert_eq!(res.status(), 404);

    let res = client.put(node.url("/todos")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, POST");

    let res = client.get(node.url("/nope?x=1")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": "not found", "path": "/nope"})
    );

    let echo: Value = client
        .post(node.url("/echo"))
        .header("content-type", "application/json")
        .body(r#"{"a":[1,2,{"b":null}]}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echo,
        json!({"received": {"a": [1, 2, {"b": null}]}, "contentType": "application/json"})
    );
}

#[tokio::test]
async fn streaming_sends_chunks_as_they_are_produced() {
    let node = Node::example("streaming");
    let start = Instant::now();
    let mut res = http1().get(node.url("/?n=4&ms=300")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        arrivals.push(start.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("chunk 0 at "), "{text}");
    // The first chunk arrives well before the last one was produced (≥ 900 ms later).
    let total = *arrivals.last().unwrap();
    assert!(total >= Duration::from_millis(900), "{arrivals:?}");
    assert!(
        arrivals[0] + Duration::from_millis(600) <= total,
        "chunks were buffered: {arrivals:?}"
    );
}

#[tokio::test]
async fn streaming_upcases_a_request_body() {
    let node = Node::example("streaming");
    let res = http2()
        .post(node.url("/upcase"))
        .body("shout this")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "SHOUT THIS");
}

#[tokio::test]
async fn wasm_module_import() {
    let node = Node::example("wasm");
    let res = http1().get(node.url("/?a=40&b=2")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"a": 40, "b": 2, "sum": 42, "module": true}));
    let res = http1().get(node.url("/?a=x")).send().await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn cached_answers_from_the_cache_and_the_cache_api() {
    let node = Node::example("cached");
    let status =
        |res: &reqwest::Response| res.headers()["cache-status"].to_str().unwrap().to_string();
    let first = http1().get(node.url("/")).send().await.unwrap();
    assert!(status(&first).contains("stored"), "{}", status(&first));
    assert_eq!(first.text().await.unwrap(), "hello from the edge cache\n");
    let second = http1().get(node.url("/")).send().await.unwrap();
    assert!(status(&second).contains("hit"), "{}", status(&second));
    let handler = http1().get(node.url("/nocache")).send().await.unwrap();
    assert!(
        status(&handler).contains("no-shared-freshness"),
        "{}",
        status(&handler)
    );
    let computed = http1().get(node.url("/expensive")).send().await.unwrap();
    let value = computed.text().await.unwrap();
    assert!(value.starts_with("computed "), "{value}");
    // The put runs in waitUntil: the next request finds it soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = http1().get(node.url("/expensive")).send().await.unwrap();
        let from_cache_api = status(&again).starts_with("Outpost; hit");
        assert_eq!(again.text().await.unwrap(), value);
        if from_cache_api {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never answered from caches.default"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn several_workers_each_serve_connections() {
    let mut node = Node::start(
        &common::examples().join("hello"),
        &["--workers", "2", "--admin", "127.0.0.1:0"],
    );
    let admin = node.admin_url();
    // Let the workers finish starting (spare runtimes) so that none looks stalled.
    assert_eq!(
        http1().get(node.url("/")).send().await.unwrap().status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        // A new client per request: a new connection, placed on the next worker.
        let url = node.url("/");
        tasks.push(tokio::spawn(async move {
            http1().get(url).send().await.unwrap().text().await.unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), "hello from the edge\n");
    }
    let stats = common::isolates(&admin).await;
    let per_worker: Vec<u64> = stats["tasks_per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    // Round robin, except that a worker busy running JavaScript at that moment is skipped.
    assert_eq!(per_worker.len(), 2, "{stats}");
    assert_eq!(per_worker.iter().sum::<u64>(), 17, "{stats}");
    assert!(
        per_worker.iter().all(|&n| n >= 1),
        "connections are spread over the workers: {stats}"
    );
}
