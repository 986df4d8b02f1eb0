//! The origin's API on a real `outpost origin` process: tokens, blobs by digest, versions
//! that need their blobs, activation and rollback through the change feed (long-polled),
//! state that survives a restart.

mod common;

use std::time::{Duration, Instant};

use common::{app, http1, outpost, Node, DEPLOY, POP};
use outpost_bundle::{load_app, Bundle};
use serde_json::{json, Value};

fn bundle(name: &str, text: &str) -> (tempfile::TempDir, Bundle) {
    let dir = app(
        name,
        &format!("export default {{ fetch() {{ return new Response({text:?}); }} }};\n"),
    );
    let bundle = load_app(dir.path()).unwrap();
    (dir, bundle)
}

async fn send(
    method: reqwest::Method,
    node: &Node,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = http1().request(method, node.url(path)).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Uploads a bundle's blobs and creates its version; returns the version id.
async fn publish(node: &Node, bundle: &Bundle) -> String {
    for module in bundle.modules.values() {
        let path = format!("/v1/blobs/{}", module.sha256);
        let (status, body) = send(
            reqwest::Method::PUT,
            node,
            &path,
            Some(DEPLOY),
            module.bytes.to_vec(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let lock = bundle.lock().to_bytes();
    let (status, body) = send(
        reqwest::Method::POST,
        node,
        "/v1/versions",
        Some(DEPLOY),
        lock,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn activate(node: &Node, app: &str, version: &str) -> Value {
    let body = serde_json::to_vec(&json!({ "version": version })).unwrap();
    let (status, body) = send(
        reqwest::Method::PUT,
        node,
        &format!("/v1/apps/{app}/active"),
        Some(DEPLOY),
        body,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn tokens_guard_every_call_and_a_refusal_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::origin_with_tokens(data.path(), &[]);
    let (_dir, b) = bundle("guarded", "v1");
    let module = b.modules.values().next().unwrap();
    let path = format!("/v1/blobs/{}", module.sha256);
    for token in [None, Some("wrong")] {
        let (status, body) = send(
            reqwest::Method::PUT,
            &node,
            &path,
            token,
            module.bytes.to_vec(),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        let (status, _) = send(reqwest::Method::GET, &node, "/v1/apps", token, vec![]).await;
        assert_eq!(status, 401);
    }
    let (status, _) = send(
        reqwest::Method::PUT,
        &node,
        &path,
        Some(POP),
        module.bytes.to_vec(),
    )
    .await;
    assert_eq!(status, 403, "the PoP token only reads");
    let (status, _) = send(reqwest::Method::HEAD, &node, &path, Some(POP), vec![]).await;
    assert_eq!(status, 404, "nothing was stored");
    let (status, body) = send(reqwest::Method::GET, &node, "/v1/apps", Some(POP), vec![]).await;
    assert_eq!((status, body["head"].as_u64()), (200, Some(0)));
}

#[tokio::test]
async fn a_version_needs_valid_blobs_then_activates_and_rolls_back_through_the_feed() {
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::origin_with_tokens(data.path(), &[]);
    let (_d1, v1) = bundle("shop", "one");
    let (_d2, v2) = bundle("shop", "two");
    // A version whose blobs are missing is refused, naming them.
    let (status, body) = send(
        reqwest::Method::POST,
        &node,
        "/v1/versions",
        Some(DEPLOY),
        v1.lock().to_bytes(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not stored yet"),
        "{body}"
    );
    // A blob that does not hash to its name is refused.
    let digest = v1.modules.values().next().unwrap().sha256.clone();
    let (status, body) = send(
        reqwest::Method::PUT,
        &node,
        &format!("/v1/blobs/{digest}"),
        Some(DEPLOY),
        b"forged".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let id1 = publish(&node, &v1).await;
    let id2 = publish(&node, &v2).await;
    assert_eq!(
        (id1.as_str(), id2.as_str()),
        (v1.id.as_str(), v2.id.as_str())
    );
    assert_eq!(activate(&node, "shop", &id1).await["seq"], 1);

    // A follower long-polls the feed; the next activation wakes it at once.
    let url = node.url("/v1/changes?since=1&wait=30");
    let follower = tokio::spawn(async move {
        let start = Instant::now();
        let body: Value = http1()
            .get(url)
            .bearer_auth(POP)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (body, start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    activate(&node, "shop", &id2).await;
    let (feed, waited) = follower.await.unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(
        feed["changes"],
        json!([{ "seq": 2, "app": "shop", "version": id2 }])
    );

    let (status, body) = send(
        reqwest::Method::POST,
        &node,
        "/v1/apps/shop/rollback",
        Some(DEPLOY),
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], json!(id1));
    let (_, versions) = send(
        reqwest::Method::GET,
        &node,
        "/v1/apps/shop/versions",
        Some(POP),
        vec![],
    )
    .await;
    assert_eq!(versions.as_array().unwrap().len(), 2);

    // The state survives a restart of the origin.
    drop(node);
    node = Node::origin_with_tokens(data.path(), &[]);
    let (_, apps) = send(reqwest::Method::GET, &node, "/v1/apps", Some(POP), vec![]).await;
    assert_eq!(apps["head"], 3);
    assert_eq!(apps["apps"], json!([{ "app": "shop", "version": id1 }]));
    let (status, _) = send(
        reqwest::Method::GET,
        &node,
        &format!("/v1/versions/{id2}"),
        Some(POP),
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    node.wait_for_stdout("listening on", Duration::from_secs(5));
}

#[tokio::test]
async fn an_origin_without_tokens_stays_on_loopback() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["origin", "--listen", "0.0.0.0:0", "--data"])
        .arg(data.path())
        .env_remove("OUTPOST_DEPLOY_TOKEN")
        .env_remove("OUTPOST_POP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without a deploy token"), "{stderr}");
}

#[tokio::test]
async fn outpost_deploy_uploads_what_is_missing_and_activates() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::origin_with_tokens(data.path(), &[]);
    let (d1, v1) = bundle("blog", "one");
    let path = d1.path().to_str().unwrap();
    let (ok, out, err) = outpost(&["deploy", path, "--origin", &node.url], Some(DEPLOY));
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("deployed blog@{}", &v1.id[..8])),
        "{out}"
    );
    assert!(err.contains("1 of 1 modules uploaded"), "{err}");
    // The same app again: nothing to upload.
    let (ok, _, err) = outpost(&["deploy", path, "--origin", &node.url], Some(DEPLOY));
    assert!(ok && err.contains("0 of 1 modules uploaded"), "{err}");
    let (_d2, v2) = bundle("blog", "two");
    let (ok, _, err) = outpost(
        &[
            "deploy",
            _d2.path().to_str().unwrap(),
            "--origin",
            &node.url,
        ],
        Some(DEPLOY),
    );
    assert!(ok, "{err}");
    let (ok, out, _) = outpost(&["versions", "blog", "--origin", &node.url], Some(POP));
    assert!(ok);
    assert!(
        out.contains(&format!("* {}", v2.id)) && out.contains(&format!("  {}", v1.id)),
        "{out}"
    );
    let (ok, out, err) = outpost(&["rollback", "blog", "--origin", &node.url], Some(DEPLOY));
    assert!(ok, "{err}");
    assert!(out.contains(&v1.id), "{out}");

    // Every rejection says why.
    let (ok, _, err) = outpost(&["deploy", path, "--origin", &node.url], Some("wrong"));
    assert!(!ok && err.contains("refused the token"), "{err}");
    let broken = app("Not Valid", "export default {};");
    let (ok, _, err) = outpost(
        &[
            "deploy",
            broken.path().to_str().unwrap(),
            "--origin",
            &node.url,
        ],
        Some(DEPLOY),
    );
    assert!(
        !ok && err.contains("invalid outpost.toml: name \"Not Valid\""),
        "{err}"
    );
    let syntax = app(
        "syntax",
        "export default { fetch() { return new Response( } };\n",
    );
    let (ok, _, err) = outpost(
        &[
            "deploy",
            syntax.path().to_str().unwrap(),
            "--origin",
            &node.url,
        ],
        Some(DEPLOY),
    );
    assert!(!ok && err.contains("the app does not load"), "{err}");
    assert!(
        err.contains("file:///src/index.js:1"),
        "the error has its file:line: {err}"
    );
    let (status, body) = send(
        reqwest::Method::GET,
        &node,
        "/v1/apps/syntax/versions",
        Some(POP),
        vec![],
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!([])),
        "nothing reached the origin"
    );
    let (ok, _, err) = outpost(
        &["deploy", path, "--origin", "http://127.0.0.1:9"],
        Some(DEPLOY),
    );
    assert!(!ok && err.contains("cannot be reached"), "{err}");
}

#[tokio::test]
async fn a_kill_during_a_deploy_leaves_a_consistent_store() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::origin_with_tokens(data.path(), &[]);
    // A bundle of many modules, so the kill lands mid-deploy.
    let dir = common::big_app();
    let url = node.url.clone();
    let path = dir.path().to_path_buf();
    let deploying = std::thread::spawn(move || {
        outpost(
            &["deploy", path.to_str().unwrap(), "--origin", &url],
            Some(DEPLOY),
        )
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(node); // SIGKILL
    let _ = deploying.join();

    let node = Node::origin_with_tokens(data.path(), &[]);
    let (status, apps) = send(reqwest::Method::GET, &node, "/v1/apps", Some(POP), vec![]).await;
    assert_eq!(status, 200);
    // Whatever is in service has its lock and every blob, intact.
    for entry in apps["apps"].as_array().unwrap() {
        let id = entry["version"].as_str().unwrap();
        let (status, lock) = send(
            reqwest::Method::GET,
            &node,
            &format!("/v1/versions/{id}"),
            Some(POP),
            vec![],
        )
        .await;
        assert_eq!(status, 200);
        for module in lock["modules"].as_array().unwrap() {
            let digest = module["sha256"].as_str().unwrap();
            let (status, _) = send(
                reqwest::Method::HEAD,
                &node,
                &format!("/v1/blobs/{digest}"),
                Some(POP),
                vec![],
            )
            .await;
            assert_eq!(status, 200, "{digest}");
        }
    }
    // Every blob stored under a digest hashes to it: nothing partial has a real name.
    for shard in std::fs::read_dir(data.path().join("blobs")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            if name.len() == 64 {
                let bytes = std::fs::read(&file).unwrap();
                assert_eq!(outpost_store::digest_of(&bytes), name);
            }
        }
    }
    // And the deploy can simply be run again.
    let (ok, _, err) = outpost(
        &[
            "deploy",
            dir.path().to_str().unwrap(),
            "--origin",
            &node.url,
        ],
        Some(DEPLOY),
    );
    assert!(ok, "{err}");
}
