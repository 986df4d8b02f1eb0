//! `outpost dev` reloads the app when its files change, without a restart; a broken edit is
//! reported with file:line and the previous version keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::{app_dir, get, Node};

fn handler(text: &str) -> String {
    format!("export default {{ fetch() {{ return new Response({text:?}); }} }};\n")
}

/// Polls until the app answers `expected`, or fails after a few seconds.
async fn wait_for_body(node: &Node, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(node, "/").await;
        if body == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still answering {body:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn edits_are_served_without_restart_and_bad_edits_keep_the_last_good_version() {
    let dir = app_dir(&[
        ("outpost.toml", "name = \"reload\"\n"),
        ("src/index.js", &handler("v1")),
    ]);
    let index = dir.path().join("src/index.js");
    let mut node = Node::start(dir.path(), &[]);
    wait_for_body(&node, "v1").await;

    std::fs::write(&index, handler("v2")).unwrap();
    wait_for_body(&node, "v2").await;
    node.wait_for_stdout("reloaded reload@", Duration::from_secs(5));

    std::fs::write(
        &index,
        "export default {\n  fetch() {\n    return new Response(\"v3\";\n  }\n};\n",
    )
    .unwrap();
    let log = node.stderr_from("not reloaded", Duration::from_secs(10));
    assert!(log.contains("SyntaxError"), "{log}");
    assert!(log.contains("src/index.js:3"), "{log}");
    assert!(log.contains("still serving reload@"), "{log}");
    for _ in 0..5 {
        assert_eq!(get(&node, "/").await, (200, "v2".to_string()));
    }

    std::fs::write(&index, handler("v4")).unwrap();
    wait_for_body(&node, "v4").await;
}

#[tokio::test]
async fn new_modules_and_vars_are_picked_up() {
    let dir = app_dir(&[
        ("outpost.toml", "name = \"reload\"\n[vars]\nWHO = \"a\"\n"),
        (
            "src/index.js",
            "export default { fetch(r, env) { return new Response(env.WHO); } };\n",
        ),
    ]);
    let node = Node::start(dir.path(), &[]);
    wait_for_body(&node, "a").await;
    std::fs::write(
        dir.path().join("outpost.toml"),
        "name = \"reload\"\n[vars]\nWHO = \"b\"\n",
    )
    .unwrap();
    wait_for_body(&node, "b").await;
    std::fs::write(
        dir.path().join("src/greet.js"),
        "export const greet = (w) => `hi ${w}`;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("src/index.js"),
        "import { greet } from \"./greet.js\";\nexport default { fetch(r, env) { return new Response(greet(env.WHO)); } };\n",
    )
    .unwrap();
    wait_for_body(&node, "hi b").await;
}

#[tokio::test]
async fn a_single_file_app_reloads_too() {
    let dir = app_dir(&[("worker.js", &handler("one"))]);
    let file = dir.path().join("worker.js");
    let node = Node::start(&file, &[]);
    wait_for_body(&node, "one").await;
    std::fs::write(&file, handler("two")).unwrap();
    wait_for_body(&node, "two").await;
}
