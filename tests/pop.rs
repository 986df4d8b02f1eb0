//! An origin and PoPs on loopback: a deploy reaches every PoP, a rollback too; a corrupt
//! blob never activates; PoPs keep serving while the origin is down, also after a restart.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{app, http1, outpost, Node, DEPLOY, POP};

fn pop(origin_url: &str, data: &Path, name: &str) -> Node {
    Node::pop(origin_url, data, name, POP, &[])
}

fn deploy(dir: &Path, origin_url: &str) {
    let (ok, _, err) = outpost(
        &["deploy", dir.to_str().unwrap(), "--origin", origin_url],
        Some(DEPLOY),
    );
    assert!(ok, "{err}");
}

fn hello(text: &str) -> tempfile::TempDir {
    app(
        "site",
        &format!("export default {{ fetch() {{ return new Response({text:?}); }} }};\n"),
    )
}

/// Waits until `node` answers `/` with `body`; returns the `x-outpost-pop` it sent.
async fn until_serves(node: &Node, body: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = http1().get(node.url("/")).send().await {
            let pop = res
                .headers()
                .get("x-outpost-pop")
                .map(|v| v.to_str().unwrap().to_string());
            if res.status() == 200 && res.text().await.unwrap() == body {
                return pop.unwrap_or_default();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never served {body:?}",
            node.url
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deploys_and_rollbacks_reach_every_pop_which_serve_on_without_the_origin() {
    let origin_data = tempfile::tempdir().unwrap();
    let mut origin_node = Node::origin_with_tokens(origin_data.path(), &[]);
    let pop_data: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pops: Vec<Node> = pop_data
        .iter()
        .enumerate()
        .map(|(i, d)| pop(&origin_node.url, d.path(), &format!("pop-{i}")))
        .collect();

    let v1 = hello("version one");
    deploy(v1.path(), &origin_node.url);
    for (i, node) in pops.iter().enumerate() {
        assert_eq!(until_serves(node, "version one").await, format!("pop-{i}"));
    }
    let v2 = hello("version two");
    deploy(v2.path(), &origin_node.url);
    for node in &pops {
        until_serves(node, "version two").await;
    }
    let (ok, _, err) = outpost(
        &["rollback", "site", "--origin", &origin_node.url],
        Some(DEPLOY),
    );
    assert!(ok, "{err}");
    for node in &pops {
        until_serves(node, "version one").await;
    }

    // The origin goes away: the PoPs keep serving, a restarted one from its store.
    let origin_url = origin_node.url.clone();
    drop(origin_node);
    let mut pops = pops;
    let restarted = pops.pop().unwrap();
    let url = restarted.url.clone();
    drop(restarted);
    let _ = url;
    let again = pop(&origin_url, pop_data[2].path(), "pop-2");
    until_serves(&again, "version one").await;
    for node in &pops {
        until_serves(node, "version one").await;
    }

    // The origin comes back (same address, same data): the PoPs catch up.
    let address = origin_url.trim_start_matches("http://").to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    command
        .arg("origin")
        .arg("--data")
        .arg(origin_data.path())
        .env("OUTPOST_DEPLOY_TOKEN", DEPLOY)
        .env("OUTPOST_POP_TOKEN", POP);
    origin_node = Node::spawn_on(command, &address);
    let v3 = hello("version three");
    deploy(v3.path(), &origin_node.url);
    for node in pops.iter().chain([&again]) {
        until_serves(node, "version three").await;
    }
}

#[tokio::test]
async fn a_corrupt_blob_never_activates() {
    let origin_data = tempfile::tempdir().unwrap();
    let origin_node = Node::origin_with_tokens(origin_data.path(), &[]);
    let pop_data = tempfile::tempdir().unwrap();
    let mut pop_node = pop(&origin_node.url, pop_data.path(), "pop-x");
    let v1 = hello("good");
    deploy(v1.path(), &origin_node.url);
    until_serves(&pop_node, "good").await;

    // Version two's blob is damaged on the origin's disk before it is activated.
    let v2 = hello("evil");
    let bundle = outpost_bundle::load_app(v2.path()).unwrap();
    let module = bundle.modules.values().next().unwrap();
    let client = http1();
    client
        .put(origin_node.url(&format!("/v1/blobs/{}", module.sha256)))
        .bearer_auth(DEPLOY)
        .body(module.bytes.to_vec())
        .send()
        .await
        .unwrap();
    let blob = origin_data
        .path()
        .join("blobs")
        .join(&module.sha256[..2])
        .join(&module.sha256);
    let res = client
        .post(origin_node.url("/v1/versions"))
        .bearer_auth(DEPLOY)
        .body(bundle.lock().to_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // Damaged on the origin's disk after the version was accepted, before activation.
    std::fs::write(
        &blob,
        b"export default { fetch() { return new Response('tampered'); } };",
    )
    .unwrap();
    let res = client
        .put(origin_node.url("/v1/apps/site/active"))
        .bearer_auth(DEPLOY)
        .body(format!("{{\"version\": \"{}\"}}", bundle.id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let line = pop_node.wait_for_stderr("not activated", Duration::from_secs(30));
    assert!(
        line.contains(&bundle.id) && line.contains(&format!("blob {}", module.sha256)),
        "{line}"
    );
    assert_eq!(until_serves(&pop_node, "good").await, "pop-x");
}

#[tokio::test]
async fn identity_headers_can_be_turned_off() {
    let origin_data = tempfile::tempdir().unwrap();
    let origin_node = Node::origin_with_tokens(origin_data.path(), &[]);
    let pop_data = tempfile::tempdir().unwrap();
    let quiet = Node::pop(
        &origin_node.url,
        pop_data.path(),
        "quiet",
        POP,
        &["--identity-headers", "off"],
    );
    let site = hello("served quietly");
    deploy(site.path(), &origin_node.url);
    until_serves(&quiet, "served quietly").await;
    let res = http1().get(quiet.url("/")).send().await.unwrap();
    assert!(res.headers().get("x-outpost-pop").is_none());
    assert!(res.headers().get("x-outpost-version").is_none());
}
