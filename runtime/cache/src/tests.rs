//! The store on its own: the disk tier across reopening, purges, the Cache API scope.

use std::time::Duration;

use http_body_util::BodyExt;

use super::*;
use crate::api::CacheScope;

fn disk(dir: &std::path::Path) -> CacheConfig {
    CacheConfig {
        disk: Some(DiskConfig {
            dir: dir.to_path_buf(),
            bytes: 64 << 20,
        }),
        ..CacheConfig::default()
    }
}

fn response(text: &'static str, cache_control: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(
        http_body_util::Full::new(bytes::Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static(cache_control),
    );
    response
}

fn get(url: &str) -> http::request::Parts {
    http::Request::get(url).body(()).unwrap().into_parts().0
}

async fn text(response: http::Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Waits until the disk tier indexed what was written behind the response.
async fn until_on_disk(cache: &Cache) {
    until_disk_size(cache, |size| size > 0, "nothing reached the disk tier").await;
}

/// Waits up to 2 s for the disk tier's size (`sizes()` syncs the tiers) to satisfy
/// `reached`; panics with `never` if it does not.
async fn until_disk_size(cache: &Cache, reached: impl Fn(u64) -> bool, never: &str) {
    for _ in 0..200 {
        if reached(cache.sizes().1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{never}");
}

#[tokio::test]
async fn the_disk_tier_is_found_again_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    // Someone else's file in the same directory is left alone.
    std::fs::write(dir.path().join("notes.meta"), "mine").unwrap();
    let url = "https://a.test/x";
    {
        let cache = Cache::open(disk(dir.path())).unwrap();
        let scope = CacheScope {
            cache: cache.clone(),
            app: "a".into(),
        };
        scope
            .put(None, &get(url), response("kept", "max-age=600"))
            .await
            .unwrap();
        until_on_disk(&cache).await;
    }
    let cache = Cache::open(disk(dir.path())).unwrap();
    let scope = CacheScope {
        cache: cache.clone(),
        app: "a".into(),
    };
    let found = scope
        .lookup(None, &get(url))
        .await
        .expect("found after reopening");
    assert_eq!(text(found).await, "kept");
    // Other apps and other caches do not see it.
    let other = CacheScope {
        cache: cache.clone(),
        app: "b".into(),
    };
    assert!(other.lookup(None, &get(url)).await.is_none());
    assert!(scope.lookup(Some("named"), &get(url)).await.is_none());
    // A purge removes it from both tiers, files included.
    cache.purge("a", &Purge::All);
    cache.sync();
    assert!(scope.lookup(None, &get(url)).await.is_none());
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files,
        ["notes.meta"],
        "purged files remain, or a stranger's went"
    );
}

/// A cache with a disk tier in `dir`, and app `a`'s `caches.default` in it.
fn app_a_on_disk(dir: &std::path::Path) -> (std::sync::Arc<Cache>, CacheScope) {
    let cache = Cache::open(disk(dir)).unwrap();
    let scope = CacheScope {
        cache: cache.clone(),
        app: "a".into(),
    };
    (cache, scope)
}

/// Lookups are skipped while the tiers hold nothing; the count behind that follows inserts,
/// replacements, deletes and purges, in memory and on disk, so what is stored after the
/// tiers emptied is found again.
#[tokio::test]
async fn a_lookup_in_empty_tiers_is_skipped_and_entries_count_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, scope) = app_a_on_disk(dir.path());
    let held = |cache: &Cache| {
        cache.sync();
        cache.tiers.held()
    };
    assert_eq!(held(&cache), 0);
    assert!(scope.lookup(None, &get("https://a.test/x")).await.is_none());

    scope
        .put(
            None,
            &get("https://a.test/x"),
            response("one", "max-age=600"),
        )
        .await
        .unwrap();
    until_on_disk(&cache).await;
    let stored = held(&cache);
    assert!(stored >= 2, "in memory and on disk: {stored}");
    // Replaced, not added. (A longer body, to see when its file is indexed.)
    let one_on_disk = cache.sizes().1;
    scope
        .put(
            None,
            &get("https://a.test/x"),
            response("two, longer", "max-age=600"),
        )
        .await
        .unwrap();
    until_disk_size(
        &cache,
        |size| size != one_on_disk,
        "the replacement never reached the disk",
    )
    .await;
    assert_eq!(held(&cache), stored);
    let found = scope.lookup(None, &get("https://a.test/x")).await.unwrap();
    assert_eq!(text(found).await, "two, longer");

    assert!(scope.delete(None, &get("https://a.test/x")));
    assert_eq!(held(&cache), 0, "deleted from both tiers");
    assert!(scope.lookup(None, &get("https://a.test/x")).await.is_none());

    // Stored again after the tiers emptied: found.
    scope
        .put(
            None,
            &get("https://a.test/y"),
            response("three", "max-age=600"),
        )
        .await
        .unwrap();
    let found = scope.lookup(None, &get("https://a.test/y")).await.unwrap();
    assert_eq!(text(found).await, "three");
    until_on_disk(&cache).await;
    cache.purge("a", &Purge::All);
    assert_eq!(held(&cache), 0, "purged from both tiers");
    assert!(scope.lookup(None, &get("https://a.test/y")).await.is_none());
}

/// A `cache.delete()` or a purge of a URL while the `put`'s body file is still being
/// written is not undone when the write lands: the file is dropped, not indexed.
#[tokio::test]
async fn a_removal_during_the_disk_write_is_not_undone_by_it() {
    use crate::store::tests_hook::PAUSE_MS;
    let dir = tempfile::tempdir().unwrap();
    let (cache, scope) = app_a_on_disk(dir.path());
    let files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "body" || x == "meta")
            })
            .count()
    };
    // Each written file waits this long before it is indexed.
    PAUSE_MS.store(300, Ordering::Relaxed);
    for (url, remove) in [
        ("https://a.test/deleted", "delete"),
        ("https://a.test/purged", "purge"),
    ] {
        scope
            .put(None, &get(url), response("gone", "max-age=600"))
            .await
            .unwrap();
        match remove {
            "delete" => assert!(scope.delete(None, &get(url)), "the memory copy is there"),
            _ => cache.purge("a", &Purge::Url(url.to_string())),
        }
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    PAUSE_MS.store(0, Ordering::Relaxed);
    cache.sync();
    for url in ["https://a.test/deleted", "https://a.test/purged"] {
        assert!(
            scope.lookup(None, &get(url)).await.is_none(),
            "{url} came back"
        );
    }
    assert_eq!(cache.sizes(), (0, 0));
    assert_eq!(files(), 0, "the dropped bodies' files are removed");
}

#[test]
fn a_urls_pass_list_fingerprint_is_the_same_from_its_key_and_from_its_uri() {
    use crate::store::{Space, UrlPrint};
    let key = |app: &str, space: Space, url: &str| Key {
        app: app.into(),
        space,
        url: url.into(),
        variant: String::new(),
    };
    // With a query, a port, a long path.
    let long = format!("http://a.localhost/{}", "x".repeat(400));
    for url in [
        "http://a.localhost/",
        "https://a.localhost:8443/path?q=1&r=%20",
        "http://127.0.0.1:8787/x",
        long.as_str(),
    ] {
        let uri: http::Uri = url.parse().unwrap();
        assert_eq!(crate::serve::url_of(&uri), url);
        let print = UrlPrint::of_uri("app", &uri);
        assert_eq!(
            UrlPrint::of_key(&key("app", Space::Http, url)),
            print,
            "{url}"
        );
        // A variant is the same URL on the list; another app, cache space or URL is not.
        let mut variant = key("app", Space::Http, url);
        variant.variant = "accept-encoding=gzip".into();
        assert_eq!(UrlPrint::of_key(&variant), print, "{url}");
        assert_ne!(UrlPrint::of_key(&key("ap", Space::Http, url)), print);
        assert_ne!(UrlPrint::of_key(&key("app", Space::Api(None), url)), print);
        assert_ne!(
            UrlPrint::of_uri("app", &"http://b.localhost/".parse().unwrap()),
            print
        );
    }
    // The app's name and the URL do not run into each other.
    assert_ne!(
        UrlPrint::of_key(&key("apph", Space::Http, "ttp://x/")),
        UrlPrint::of_key(&key("app", Space::Http, "http://x/")),
    );
}
