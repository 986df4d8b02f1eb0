//! Tenants that break their limits are stopped, get a clear error, and the node keeps
//! serving: an infinite loop (CPU), a heap bomb (memory), a loop at module top level.

mod common;

use std::time::{Duration, Instant};

use common::{app, get, http1, Node};

const HANDLER: &str = r#"
let served = 0;
export default {
  async fetch(request) {
    const path = new URL(request.url).pathname;
    served++;
    if (path === "/loop") {
      while (true) {}
    }
    if (path === "/loop-later") {
      await new Promise((resolve) => setTimeout(resolve, 10));
      for (;;) {}
    }
    if (path === "/heap") {
      const keep = [];
      for (;;) keep.push(new Array(100000).fill({ served }));
    }
    if (path === "/wait") {
      await new Promise((resolve) => setTimeout(resolve, 2000));
      return new Response("waited");
    }
    return new Response(`fine ${served}`);
  },
};
"#;

/// Requests `path` (a loop) and checks that it is stopped at the CPU limit, within 5 s.
async fn stopped_at_the_cpu_limit(node: &Node, path: &str) {
    let start = Instant::now();
    let res = http1().get(node.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 503, "{path}");
    assert_eq!(res.headers()["x-outpost-error"], "limit-exceeded");
    let body = res.text().await.unwrap();
    assert!(body.contains("CPU limit"), "{body}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{path} took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_and_the_isolate_replaced() {
    let dir = app("looper", HANDLER);
    let mut node = Node::start(dir.path(), &["--cpu-ms", "200"]);
    assert_eq!(get(&node, "/").await, (200, "fine 1".to_string()));
    for path in ["/loop", "/loop-later"] {
        stopped_at_the_cpu_limit(&node, path).await;
    }
    node.wait_for_stderr("exceeded its CPU limit", Duration::from_secs(5));
    // A fresh isolate serves (module state starts over).
    assert_eq!(get(&node, "/").await, (200, "fine 1".to_string()));
}

#[tokio::test]
async fn requests_sharing_the_isolate_fail_with_it_and_later_ones_succeed() {
    let dir = app("looper", HANDLER);
    let node = Node::start(dir.path(), &["--cpu-ms", "200"]);
    let waiting = tokio::spawn({
        let url = node.url("/wait");
        async move { http1().get(url).send().await.unwrap().status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = get(&node, "/loop").await;
    assert_eq!(status, 503);
    assert_eq!(
        waiting.await.unwrap(),
        503,
        "in flight on the stopped isolate"
    );
    assert_eq!(get(&node, "/wait").await, (200, "waited".to_string()));
}

#[tokio::test]
async fn a_heap_bomb_is_stopped_without_killing_the_node() {
    let dir = app("bomber", HANDLER);
    let mut node = Node::start(dir.path(), &["--memory-mb", "64"]);
    let res = http1().get(node.url("/heap")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body = res.text().await.unwrap();
    assert!(body.contains("memory limit of 64 MiB"), "{body}");
    node.wait_for_stderr("exceeded its memory limit", Duration::from_secs(5));
    assert_eq!(get(&node, "/").await, (200, "fine 1".to_string()));
    let res = http1().get(node.url("/heap")).send().await.unwrap();
    assert_eq!(res.status(), 503, "a second bomb is stopped too");
    assert_eq!(get(&node, "/").await, (200, "fine 1".to_string()));
}

#[tokio::test]
async fn a_loop_at_module_top_level_is_a_load_error() {
    let dir = app(
        "stuck",
        "for (;;) {}\nexport default { fetch() { return new Response('x'); } };\n",
    );
    let mut node = Node::start(dir.path(), &["--cpu-ms", "200"]);
    let log = node.stderr_from("cannot load the app", Duration::from_secs(10));
    assert!(log.contains("CPU limit"), "{log}");
    let (status, body) = get(&node, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("CPU limit"), "{body}");
}

/// The voluntary context switches of the node's thread named `name` (as /proc shows it, at
/// most 15 characters).
fn switches_of(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        // Other threads may end meanwhile (tokio's blocking threads after 10 s idle).
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("voluntary_ctxt_switches:"))
            .unwrap();
        return line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    panic!("node {pid} has no thread named {name}");
}

#[tokio::test]
async fn the_watchdog_sleeps_while_the_node_is_idle_and_still_stops_a_loop() {
    let dir = app("idler", HANDLER);
    let node = Node::start(dir.path(), &["--cpu-ms", "200"]);
    assert_eq!(get(&node, "/").await, (200, "fine 1".to_string()));
    // With a 200 ms CPU limit a watching watchdog wakes every 20 ms; an idle one (after a
    // second without JavaScript) not at all.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = switches_of(node.pid(), "outpost-watchdo");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = switches_of(node.pid(), "outpost-watchdo");
        if after == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle node's watchdog still wakes up ({} times in 500 ms)",
            after - before
        );
    }
    // The first turn after the idle stretch wakes it: a loop is stopped as always.
    stopped_at_the_cpu_limit(&node, "/loop").await;
    assert_eq!(get(&node, "/").await, (200, "fine 1".to_string()));
}
