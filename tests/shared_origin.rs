//! Two origin processes sharing a real PostgreSQL (the catalog) and a real S3-compatible
//! server (the blobs), started by the test: a deploy or rollback through either reaches PoPs
//! following either, a change made through one wakes long-polls on the other
//! (LISTEN/NOTIFY), concurrent writes through both keep one gap-free feed, and a kill -9 of
//! an origin mid-deploy leaves the shared state consistent.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::services::{Postgres, S3Server, S3_ENV};
use common::{app, app_dir, http1, outpost, Node, DEPLOY, POP};
use serde_json::Value;

const BUCKET: &str = "outpost-blobs";

/// Postgres, an S3 server with the bucket, and what an origin needs to use them.
struct Shared {
    postgres: Postgres,
    s3: S3Server,
}

impl Shared {
    async fn start() -> Shared {
        let shared = Shared {
            postgres: Postgres::start(),
            s3: S3Server::start(),
        };
        shared.s3.create_bucket(BUCKET).await;
        shared
    }

    /// `outpost origin --database … --blobs …` on 127.0.0.1:0, no data directory at all.
    fn origin(&self) -> Node {
        Node::spawn(self.origin_command())
    }

    fn origin_command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
        command
            .args(["origin", "--database", &self.postgres.url, "--blobs"])
            .arg(self.s3.url(BUCKET))
            .env_remove("OUTPOST_DATABASE")
            .env("OUTPOST_DEPLOY_TOKEN", DEPLOY)
            .env("OUTPOST_POP_TOKEN", POP)
            .envs(S3_ENV);
        command
    }
}

fn pop(origin_url: &str, data: &Path, name: &str) -> Node {
    Node::pop(origin_url, data, name, POP, &[])
}

fn hello(name: &str, text: &str) -> tempfile::TempDir {
    app(
        name,
        &format!("export default {{ fetch() {{ return new Response({text:?}); }} }};\n"),
    )
}

fn deploy(dir: &Path, origin_url: &str) -> String {
    let (ok, out, err) = outpost(
        &["deploy", dir.to_str().unwrap(), "--origin", origin_url],
        Some(DEPLOY),
    );
    assert!(ok, "deploy through {origin_url}: {err}");
    out
}

/// Waits until `node` answers `path` with `body`.
async fn until_serves(node: &Node, path: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = http1().get(node.url(path)).send().await {
            if res.status() == 200 && res.text().await.unwrap() == body {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never served {body:?} at {path}",
            node.url
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `path` with the PoP token; the status and the body's bytes.
async fn get_bytes(node: &Node, path: &str) -> (u16, bytes::Bytes) {
    let res = http1()
        .get(node.url(path))
        .bearer_auth(POP)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.bytes().await.unwrap())
}

/// GETs `path` with the PoP token; the status and the body as JSON.
async fn get(node: &Node, path: &str) -> (u16, Value) {
    let (status, bytes) = get_bytes(node, path).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origins_share_postgres_and_s3() {
    let shared = Shared::start().await;
    let a = shared.origin();
    let b = shared.origin();
    assert!(
        a.stdout()
            .iter()
            .any(|l| l.contains("catalog in postgres://")),
        "{:?}",
        a.stdout()
    );
    let pop_data: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let pops = [
        pop(&a.url, pop_data[0].path(), "pop-a"),
        pop(&b.url, pop_data[1].path(), "pop-b"),
    ];

    // A deploy through one origin reaches the PoPs of both.
    let v1 = hello("site", "version one");
    deploy(v1.path(), &a.url);
    for node in &pops {
        until_serves(node, "/", "version one").await;
    }
    // Its blobs went to S3, not to any local directory.
    let bundle = outpost_bundle::load_app(v1.path()).unwrap();
    let keys = shared.s3.keys(BUCKET).await;
    for module in bundle.modules.values() {
        assert!(
            keys.contains(&format!("blobs/{}", module.sha256)),
            "{keys:?}"
        );
    }
    // The other origin knows the version.
    let (ok, out, err) = outpost(&["versions", "site", "--origin", &b.url], Some(DEPLOY));
    assert!(ok, "{err}");
    assert!(out.contains(&bundle.lock().id()), "{out}");

    let v2 = hello("site", "version two");
    deploy(v2.path(), &b.url);
    for node in &pops {
        until_serves(node, "/", "version two").await;
    }
    let (ok, _, err) = outpost(&["rollback", "site", "--origin", &a.url], Some(DEPLOY));
    assert!(ok, "{err}");
    for node in &pops {
        until_serves(node, "/", "version one").await;
    }

    // A long-poll on B wakes for a change made through A: LISTEN/NOTIFY, not a timer.
    let (_, feed) = get(&b, "/v1/changes?since=0").await;
    let head = feed["head"].as_u64().unwrap();
    let url = b.url(&format!("/v1/changes?since={head}&wait=50"));
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let feed: Value = http1()
            .get(url)
            .bearer_auth(POP)
            .timeout(Duration::from_secs(90))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (feed, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, _, err) = outpost(&["rollback", "site", "--origin", &a.url], Some(DEPLOY));
    assert!(!ok, "nothing before version one: {err}");
    let v3 = hello("site", "version three");
    deploy(v3.path(), &a.url);
    let (feed, waited) = waiting.await.unwrap();
    let changes = feed["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{feed}");
    assert_eq!(changes[0]["seq"].as_u64().unwrap(), head + 1, "{feed}");
    assert!(waited < Duration::from_secs(50), "woken, not timed out");

    // A bad token changes nothing on either.
    let v4 = hello("site", "version four");
    let (ok, _, err) = outpost(
        &["deploy", v4.path().to_str().unwrap(), "--origin", &b.url],
        Some("wrong"),
    );
    assert!(!ok && err.contains("401"), "{err}");
    let (_, after) = get(&a, "/v1/changes?since=0").await;
    assert_eq!(after["head"].as_u64().unwrap(), head + 1);

    // One origin dies: the other takes deploys, and its PoP serves them; the dead origin's
    // PoP serves on from its store.
    let a_url = a.url.clone();
    drop(a);
    let v5 = hello("site", "version five");
    deploy(v5.path(), &b.url);
    until_serves(&pops[1], "/", "version five").await;
    until_serves(&pops[0], "/", "version three").await;
    // A replacement origin on the same address finds everything, and the PoP catches up.
    let address = a_url.trim_start_matches("http://").to_string();
    let _a = Node::spawn_on(shared.origin_command(), &address);
    until_serves(&pops[0], "/", "version five").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_origins_keep_one_gap_free_feed() {
    let shared = Shared::start().await;
    let origins = [shared.origin(), shared.origin()];
    let pop_data = tempfile::tempdir().unwrap();
    let follower = pop(&origins[1].url, pop_data.path(), "pop");

    // Two apps, each deployed several times, one through each origin, at the same time.
    let rounds = 4;
    let mut dirs = Vec::new();
    for (i, name) in ["left", "right"].into_iter().enumerate() {
        for round in 0..rounds {
            let dir = app_dir(&[
                (
                    "outpost.toml",
                    &format!("name = {name:?}\nroutes = [\"{name}.localhost/*\"]\n"),
                ),
                (
                    "src/index.js",
                    &format!(
                        "export default {{ fetch() {{ return new Response('{name} {round}'); }} }};\n"
                    ),
                ),
            ]);
            dirs.push((i, dir));
        }
    }
    let mut threads = Vec::new();
    for (side, origin) in origins.iter().enumerate() {
        let url = origin.url.clone();
        let paths: Vec<_> = dirs
            .iter()
            .filter(|(i, _)| *i == side)
            .map(|(_, d)| d.path().to_path_buf())
            .collect();
        threads.push(std::thread::spawn(move || {
            for path in paths {
                deploy(&path, &url);
            }
        }));
    }
    for thread in threads {
        thread.join().unwrap();
    }

    // One feed, 1..=8 with no gaps and no duplicates, the same through either origin.
    let (_, via_a) = get(&origins[0], "/v1/changes?since=0").await;
    let (_, via_b) = get(&origins[1], "/v1/changes?since=0").await;
    assert_eq!(via_a, via_b);
    let seqs: Vec<u64> = via_a["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=2 * rounds as u64).collect::<Vec<_>>());
    assert_eq!(
        shared.postgres.psql("SELECT count(*) FROM outpost_feed"),
        (2 * rounds).to_string()
    );
    // The follower ends on both apps' last versions.
    let last = rounds - 1;
    for name in ["left", "right"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let res = http1()
                .get(follower.url("/"))
                .header("host", format!("{name}.localhost"))
                .send()
                .await
                .unwrap();
            if res.status() == 200 && res.text().await.unwrap() == format!("{name} {last}") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached round {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_deploy_leaves_the_shared_store_consistent() {
    let shared = Shared::start().await;
    let a = shared.origin();
    let b = shared.origin();
    // Many modules, so the kill lands mid-deploy.
    let dir = common::big_app();
    let (url, path) = (a.url.clone(), dir.path().to_path_buf());
    let deploying = std::thread::spawn(move || {
        outpost(
            &["deploy", path.to_str().unwrap(), "--origin", &url],
            Some(DEPLOY),
        )
    });
    // Kill the origin once the first blobs are in the bucket, with most still to come.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.s3.keys(BUCKET).await.is_empty() {
        assert!(Instant::now() < deadline, "no blob reached the bucket");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(a); // SIGKILL
    let (ok, _, err) = deploying.join().unwrap();
    assert!(!ok, "the kill landed mid-deploy: {err}");

    // Through the survivor: whatever is in service has its lock and every blob, intact.
    let (status, apps) = get(&b, "/v1/apps").await;
    assert_eq!(status, 200);
    for entry in apps["apps"].as_array().unwrap() {
        let id = entry["version"].as_str().unwrap();
        let (_, lock) = get_bytes(&b, &format!("/v1/versions/{id}")).await;
        let lock = outpost_bundle::Lock::from_bytes(&lock).unwrap();
        for module in &lock.modules {
            let (_, bytes) = get_bytes(&b, &format!("/v1/blobs/{}", module.sha256)).await;
            assert_eq!(outpost_store::digest_of(&bytes), module.sha256);
        }
    }
    // Every object in the bucket, under a digest's name, holds bytes that hash to it.
    for key in shared.s3.keys(BUCKET).await {
        let digest = key.trim_start_matches("blobs/");
        let (status, bytes) = get_bytes(&b, &format!("/v1/blobs/{digest}")).await;
        assert_eq!(status, 200, "{key}: {}", String::from_utf8_lossy(&bytes));
        assert_eq!(
            outpost_store::digest_of(&bytes),
            digest,
            "{key} ({} bytes)",
            bytes.len()
        );
    }
    // The feed and the active pointers agree.
    assert_eq!(
        shared
            .postgres
            .psql("SELECT count(*) FROM outpost_apps a JOIN outpost_feed f ON f.seq = a.seq WHERE f.version IS DISTINCT FROM a.active"),
        "0"
    );
    // And the deploy completes through the other origin.
    let out = deploy(dir.path(), &b.url);
    assert!(out.contains("deployed big@"), "{out}");
    let pop_data = tempfile::tempdir().unwrap();
    let follower = pop(&b.url, pop_data.path(), "pop");
    until_serves(&follower, "/", "big").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_answer_503_while_postgres_is_down_and_recover_when_it_returns() {
    let mut shared = Shared::start().await;
    let a = shared.origin();
    let b = shared.origin();
    let pop_data = tempfile::tempdir().unwrap();
    let follower = pop(&b.url, pop_data.path(), "pop");
    let v1 = hello("site", "version one");
    deploy(v1.path(), &a.url);
    until_serves(&follower, "/", "version one").await;

    shared.postgres.kill();
    let res = http1()
        .get(a.url("/v1/apps"))
        .bearer_auth(POP)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("PostgreSQL"),
        "{body}"
    );
    let v2 = hello("site", "version two");
    let (ok, _, err) = outpost(
        &["deploy", v2.path().to_str().unwrap(), "--origin", &a.url],
        Some(DEPLOY),
    );
    assert!(!ok && err.contains("503"), "{err}");
    // The PoP serves on meanwhile.
    until_serves(&follower, "/", "version one").await;

    // PostgreSQL returns: both origins reconnect by themselves, B's listener included, so
    // its follower hears of a deploy made through A.
    shared.postgres.restart();
    deploy(v2.path(), &a.url);
    until_serves(&follower, "/", "version two").await;
    let (ok, out, err) = outpost(&["versions", "site", "--origin", &b.url], Some(DEPLOY));
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
}
