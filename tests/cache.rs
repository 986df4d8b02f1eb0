//! The HTTP cache in front of handlers, on a real node: hits never reach the handler,
//! only responses declared storable by a shared cache are stored, expiry, revalidation
//! (304 from the cache and from the handler), Vary, coalescing of concurrent misses,
//! stale-if-error and stale-while-revalidate, `[cache] enabled = false`, dev reloads; the
//! Cache API; purges through the origin reaching two PoPs; the disk tier across a restart;
//! a 100 MB cached body served without being buffered.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{app, app_dir, http1, outpost, Node, DEPLOY, POP};

/// A handler whose response is described by the query: `cc` (Cache-Control), `cdn`
/// (CDN-Cache-Control), `etag` (answers 304 to a matching If-None-Match), `vary`, `tag`
/// (Cache-Tag), `cookie` (Set-Cookie), `fail` (throws from the second call on), `slow`
/// (ms before answering), `age` (an Age the response arrives with), `from` (`cc` is sent
/// from this call on). A PATCH fails with 500. It counts calls per URL: `x-call` and the
/// body say which call answered.
const HANDLER: &str = r#"
const calls = new Map();
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const key = url.pathname + url.search;
    const n = (calls.get(key) ?? 0) + 1;
    calls.set(key, n);
    const q = url.searchParams;
    const headers = { "x-call": String(n) };
    if (request.method === "PATCH") return new Response("refused", { status: 500, headers });
    if (q.has("cc") && n >= Number(q.get("from") ?? 1)) headers["cache-control"] = q.get("cc");
    if (q.has("cdn")) headers["cdn-cache-control"] = q.get("cdn");
    if (q.has("vary")) headers["vary"] = q.get("vary");
    if (q.has("tag")) headers["cache-tag"] = q.get("tag");
    if (q.has("cookie")) headers["set-cookie"] = "session=" + n;
    if (q.has("age")) headers["age"] = q.get("age");
    if (q.has("slow")) await new Promise((r) => setTimeout(r, Number(q.get("slow"))));
    if (q.has("fail") && n > 1) throw new Error("the handler fails now");
    if (q.has("etag")) {
      headers["etag"] = '"' + q.get("etag") + '"';
      if (request.headers.get("if-none-match") === headers["etag"]) {
        return new Response(null, { status: 304, headers });
      }
    }
    const lang = request.headers.get("accept-language") ?? "-";
    return new Response(`${url.pathname} call ${n} lang ${lang}`, { headers });
  },
};
"#;

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn call(&self) -> u32 {
        self.headers
            .get("x-call")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0)
    }

    fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// GETs `path` with `headers`; none if the node cannot be reached or the body not read.
async fn try_fetch(node: &Node, path: &str, headers: &[(&str, &str)]) -> Option<Answer> {
    let mut request = http1().get(node.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.ok()?;
    Some(Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.ok()?,
    })
}

async fn fetch(node: &Node, path: &str, headers: &[(&str, &str)]) -> Answer {
    try_fetch(node, path, headers)
        .await
        .unwrap_or_else(|| panic!("GET {path} on {} failed", node.url))
}

fn node() -> Node {
    let dir = app("cached", HANDLER);
    let mut node = Node::start(dir.path(), &[]);
    node.keep(dir);
    node
}

#[tokio::test]
async fn fresh_hits_never_reach_the_handler() {
    let node = node();
    let path = "/page?cc=public,max-age=60";
    let first = fetch(&node, path, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.call(), 1);
    assert!(
        first.cache_status().starts_with("Outpost; fwd=uri-miss")
            && first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    for _ in 0..3 {
        let again = fetch(&node, path, &[]).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.body, "/page call 1 lang -");
        assert_eq!(again.call(), 1, "a hit reached the handler");
        assert!(again.hit(), "{}", again.cache_status());
        assert!(again.headers.contains_key("age"));
        // No isolate ran for it: the node adds Server-Timing only to what an isolate
        // answered.
        assert!(!again.headers.contains_key("server-timing"));
    }
    // Another URL is another entry; HEAD is answered from the GET's entry.
    assert_eq!(
        fetch(&node, "/page?cc=public,max-age=60&x", &[])
            .await
            .call(),
        1
    );
    let head = http1().head(node.url(path)).send().await.unwrap();
    assert!(head.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(head.headers()["x-call"], "1");
}

/// RFC 9111 §4.4: a cache forgets a URL when an unsafe request to it succeeds; a safe
/// method (OPTIONS) or a failed unsafe request leaves what it stored.
#[tokio::test]
async fn a_successful_unsafe_request_makes_the_cache_forget_its_url() {
    let node = node();
    let path = "/doc?cc=public,max-age=600";
    assert_eq!(fetch(&node, path, &[]).await.call(), 1);
    assert!(fetch(&node, path, &[]).await.hit());
    let send = |method: &str| {
        http1()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                node.url(path),
            )
            .send()
    };
    let options = send("OPTIONS").await.unwrap();
    assert_eq!(options.status(), 200);
    let failed = send("PATCH").await.unwrap();
    assert_eq!(failed.status(), 500);
    let kept = fetch(&node, path, &[]).await;
    assert!(
        kept.hit(),
        "forgotten after OPTIONS or a failed PATCH: {}",
        kept.cache_status()
    );
    assert_eq!(kept.body, "/doc call 1 lang -");

    let posted = send("POST").await.unwrap();
    assert_eq!(posted.status(), 200);
    let after = fetch(&node, path, &[]).await;
    assert!(!after.hit(), "still served from the cache after a POST");
    assert_eq!(after.call(), 5, "{}", after.body);
    // Stored again from that miss.
    assert!(fetch(&node, path, &[]).await.hit());
}

#[tokio::test]
async fn only_responses_declared_shareable_are_stored() {
    let node = node();
    let stored = |cc: &str| format!("/s?{cc}");
    for (query, expected) in [
        ("cc=public,max-age=60", true),
        ("cc=s-maxage=60", true),
        ("cdn=max-age=60", true),
        ("cc=no-store&cdn=max-age=60", true),
        ("cc=max-age=60", false),
        ("cc=private,max-age=60", false),
        ("cc=public,max-age=60,no-store", false),
        ("cc=public,max-age=60&cdn=no-store", false),
        ("cc=public,max-age=60&cookie", false),
        ("x=none", false),
    ] {
        let path = stored(query);
        let first = fetch(&node, &path, &[]).await;
        let second = fetch(&node, &path, &[]).await;
        assert_eq!(
            second.hit(),
            expected,
            "{query}: {} then {}",
            first.cache_status(),
            second.cache_status()
        );
        assert_eq!(second.call(), if expected { 1 } else { 2 }, "{query}");
        if !expected {
            assert!(second.cache_status().contains("fwd="), "{query}");
        }
    }
}

#[tokio::test]
async fn a_url_whose_responses_become_storable_is_stored_again() {
    let node = node();
    // Not storable for two calls: the URL is on the pass list (its misses skip coalescing
    // and are forwarded without a copy of the request kept).
    let path = "/later?cc=public,max-age=60&from=3";
    for call in 1..=2 {
        let miss = fetch(&node, path, &[]).await;
        assert_eq!(miss.call(), call);
        assert_eq!(
            miss.cache_status(),
            "Outpost; fwd=uri-miss; detail=no-shared-freshness"
        );
    }
    // Storable now: the pass ends, and the next miss stores it.
    let third = fetch(&node, path, &[]).await;
    assert_eq!(third.call(), 3);
    assert_eq!(third.cache_status(), "Outpost; fwd=uri-miss; detail=pass");
    let fourth = fetch(&node, path, &[]).await;
    assert_eq!(fourth.call(), 4);
    assert!(
        fourth.cache_status().contains("stored"),
        "{}",
        fourth.cache_status()
    );
    let hit = fetch(&node, path, &[]).await;
    assert!(hit.hit(), "{}", hit.cache_status());
    assert_eq!(hit.call(), 4);
    // A response that stays unstorable (private) keeps its URL on the list.
    let private = "/private?cc=private,max-age=60";
    for call in 1..=3 {
        let miss = fetch(&node, private, &[]).await;
        assert_eq!(miss.call(), call);
        assert_eq!(
            miss.cache_status(),
            "Outpost; fwd=uri-miss; detail=not-storable"
        );
    }
}

#[tokio::test]
async fn an_expired_response_goes_back_to_the_handler() {
    let node = node();
    let path = "/short?cc=public,max-age=1";
    assert_eq!(fetch(&node, path, &[]).await.call(), 1);
    let hit = fetch(&node, path, &[]).await;
    assert!(hit.hit());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = fetch(&node, path, &[]).await;
    assert_eq!(expired.call(), 2, "{}", expired.cache_status());
    assert!(
        expired.cache_status().contains("fwd=stale"),
        "{}",
        expired.cache_status()
    );
    // The new response is stored in its turn, its age counted from then.
    let again = fetch(&node, path, &[]).await;
    assert!(again.hit() && again.call() == 2);
    let age: u64 = again.headers["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 1, "age {age}");

    // A response that arrives already aged 50 s of its 60 is fresh for 10 s more.
    let aged = "/aged?cc=public,max-age=60&age=50";
    assert_eq!(fetch(&node, aged, &[]).await.call(), 1);
    let hit = fetch(&node, aged, &[]).await;
    assert!(hit.hit());
    let age: u64 = hit.headers["age"].to_str().unwrap().parse().unwrap();
    assert!((50..=52).contains(&age), "age {age}");
    assert!(
        hit.cache_status().contains("ttl=9") || hit.cache_status().contains("ttl=10"),
        "{}",
        hit.cache_status()
    );
}

#[tokio::test]
async fn revalidation_answers_304_from_the_cache_and_uses_the_handlers_304() {
    let node = node();
    // Fresh: a client's matching If-None-Match is answered 304 by the cache.
    let fresh = "/v?cc=public,max-age=60&etag=one";
    assert_eq!(fetch(&node, fresh, &[]).await.call(), 1);
    let not_modified = fetch(&node, fresh, &[("if-none-match", "\"one\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.hit(), "{}", not_modified.cache_status());
    assert_eq!(not_modified.call(), 1);
    let modified = fetch(&node, fresh, &[("if-none-match", "\"other\"")]).await;
    assert_eq!((modified.status, modified.call()), (200, 1));

    // Always stale (max-age=0): revalidated with the handler, which answers 304; the stored
    // body is served with the 304's headers.
    let stale = "/r?cc=public,max-age=0&etag=two";
    let first = fetch(&node, stale, &[]).await;
    assert_eq!(first.body, "/r call 1 lang -");
    let second = fetch(&node, stale, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "/r call 1 lang -", "the stored body");
    assert_eq!(second.call(), 2, "the handler's 304 updated the headers");
    assert!(
        second.cache_status().contains("fwd=stale")
            && second.cache_status().contains("fwd-status=304"),
        "{}",
        second.cache_status()
    );
}

#[tokio::test]
async fn vary_keeps_a_variant_per_request_header_value() {
    let node = node();
    let path = "/lang?cc=public,max-age=60&vary=accept-language";
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    let first = fetch(&node, path, &en).await;
    assert_eq!(first.body, "/lang call 1 lang en");
    let other = fetch(&node, path, &fr).await;
    assert_eq!(other.body, "/lang call 2 lang fr");
    assert!(
        other.cache_status().contains("fwd=vary-miss"),
        "{}",
        other.cache_status()
    );
    for (headers, body) in [(&en, "/lang call 1 lang en"), (&fr, "/lang call 2 lang fr")] {
        let again = fetch(&node, path, headers).await;
        assert!(again.hit(), "{}", again.cache_status());
        assert_eq!(again.body, body);
    }
}

#[tokio::test]
async fn concurrent_misses_make_one_handler_call() {
    let node = node();
    let path = "/popular?cc=public,max-age=60&slow=400";
    let url = node.url(path);
    let client = http1();
    let requests = (0..50).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let call = response.headers()["x-call"].to_str().unwrap().to_string();
            (status, call, response.text().await.unwrap())
        }
    });
    let answers = futures::future::join_all(requests).await;
    for (status, call, body) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(call, "1", "more than one handler call");
        assert_eq!(body, "/popular call 1 lang -");
    }
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_response_when_the_handler_fails() {
    let node = node();
    let path = "/fragile?cc=public,max-age=1,stale-if-error=60&fail";
    assert_eq!(fetch(&node, path, &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rescued = fetch(&node, path, &[]).await;
    assert_eq!(rescued.status, 200, "{}", rescued.body);
    assert_eq!(rescued.body, "/fragile call 1 lang -");
    assert!(
        rescued.cache_status().contains("stale-if-error"),
        "{}",
        rescued.cache_status()
    );

    // Without stale-if-error the failure shows.
    let plain = "/plain?cc=public,max-age=1&fail";
    assert_eq!(fetch(&node, plain, &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fetch(&node, plain, &[]).await.status, 500);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let node = node();
    let path = "/swr?cc=public,max-age=1,stale-while-revalidate=60&slow=300";
    assert_eq!(fetch(&node, path, &[]).await.call(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let stale = fetch(&node, path, &[]).await;
    assert_eq!(stale.call(), 1);
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "waited for the handler"
    );
    // The refresh lands behind it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fetch(&node, path, &[]).await;
        if now.call() == 2 && now.hit() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never refreshed: {}",
            now.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_app_can_turn_the_cache_off_and_dev_reloads_empty_it() {
    let off = app_dir(&[
        ("outpost.toml", "name = \"off\"\n[cache]\nenabled = false\n"),
        ("src/index.js", HANDLER),
    ]);
    let mut node = Node::start(off.path(), &[]);
    node.keep(off);
    let path = "/p?cc=public,max-age=60";
    assert_eq!(fetch(&node, path, &[]).await.call(), 1);
    let second = fetch(&node, path, &[]).await;
    assert_eq!(second.call(), 2);
    assert_eq!(second.cache_status(), "Outpost; fwd=bypass");

    let dir = app("reloaded", HANDLER);
    let mut node = Node::start(dir.path(), &[]);
    assert_eq!(fetch(&node, path, &[]).await.call(), 1);
    assert!(fetch(&node, path, &[]).await.hit());
    std::fs::write(
        dir.path().join("src/index.js"),
        format!("{HANDLER}\n// edited\n"),
    )
    .unwrap();
    node.wait_for_stdout("reloaded reloaded@", Duration::from_secs(30));
    let after = fetch(&node, path, &[]).await;
    assert!(
        !after.hit(),
        "served what the previous version stored: {}",
        after.cache_status()
    );
    assert_eq!(after.call(), 1, "the new version's first call");
    node.keep(dir);
}

const CACHE_API: &str = r#"
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const key = "https://data.example/item";
    const cache = url.searchParams.has("named") ? await caches.open("named") : caches.default;
    const op = url.pathname.slice(1);
    if (op === "put") {
      await cache.put(key, new Response("value of " + url.host + " " + "x".repeat(100), {
        headers: { "cache-control": "max-age=60", etag: '"e"', "content-type": "text/plain" },
      }));
      return new Response("stored");
    }
    if (op === "match") {
      const range = url.searchParams.get("range");
      const found = await cache.match(range ? new Request(key, { headers: { range } }) : key);
      if (!found) return new Response("none");
      return new Response(`${found.status} ${await found.text()}`);
    }
    if (op === "delete") return new Response(String(await cache.delete(key)));
    if (op === "drop") return new Response(String(await caches.delete("named")));
    if (op === "keys") {
      const all = await cache.keys();
      const some = await cache.keys(key);
      return Response.json([...all, ...some].map((r) => `${r.method} ${r.url}`));
    }
    if (op === "errors") {
      const errors = [];
      const attempts = [
        () => cache.put(new Request(key, { method: "POST" }), new Response("x")),
        () => cache.put(key, new Response("x", { status: 206 })),
        () => cache.put(key, new Response("x", { headers: { vary: "*" } })),
        () => cache.put("not a url", new Response("x")),
        () => caches.open("n".repeat(1024)),
        () => cache.match(key, { ignoreSearch: true }),
      ];
      for (const attempt of attempts) {
        try { await attempt(); errors.push("no error"); }
        catch (e) { errors.push(`${e.name}: ${e.message}`); }
      }
      const used = new Response("used");
      await used.text();
      try { await cache.put(key, used); errors.push("no error"); }
      catch (e) { errors.push(`${e.name}: ${e.message}`); }
      errors.push(String(await cache.match(new Request(key, { method: "POST" }))));
      errors.push(String(await cache.delete(new Request(key, { method: "POST" }))));
      return Response.json(errors);
    }
    if (op === "stream") {
      let i = 0;
      const body = new ReadableStream({
        pull(c) { if (i++ < 4) c.enqueue(new TextEncoder().encode("chunk" + i + ";")); else c.close(); },
      });
      await cache.put(key + "/stream", new Response(body, { headers: { "cache-control": "max-age=60" } }));
      const found = await cache.match(key + "/stream");
      return new Response(await found.text());
    }
    return new Response("?", { status: 404 });
  },
};
"#;

#[tokio::test]
async fn the_cache_api_is_scoped_per_app_and_per_name() {
    let a = app("alpha", CACHE_API);
    let b = app("beta", CACHE_API);
    let mut node = Node::start(a.path(), &[b.path().to_str().unwrap()]);
    node.keep(a);
    node.keep(b);
    let on = |app: &str, path: &str| {
        let url = node.url(path);
        let client = http1();
        let host = format!("{app}.localhost");
        async move {
            let response = client.get(url).header("host", host).send().await.unwrap();
            response.text().await.unwrap()
        }
    };
    assert_eq!(on("alpha", "/match").await, "none");
    assert_eq!(on("alpha", "/put").await, "stored");
    let value = format!("value of alpha.localhost {}", "x".repeat(100));
    assert_eq!(on("alpha", "/match").await, format!("200 {value}"));
    // Another app never sees it, nor does another cache of the same app.
    assert_eq!(on("beta", "/match").await, "none");
    assert_eq!(on("alpha", "/match?named").await, "none");
    // Range requests get 206 with the bytes asked for.
    assert_eq!(on("alpha", "/match?range=bytes%3D0-4").await, "206 value");
    assert_eq!(on("alpha", "/delete").await, "true");
    assert_eq!(on("alpha", "/delete").await, "false");
    assert_eq!(on("alpha", "/match").await, "none");
    // A streamed body is stored whole.
    assert_eq!(on("beta", "/stream").await, "chunk1;chunk2;chunk3;chunk4;");
    // `caches.delete(name)` removes that cache of that app, and says whether it held any.
    assert_eq!(on("alpha", "/put?named").await, "stored");
    assert_eq!(on("beta", "/put?named").await, "stored");
    assert_eq!(on("alpha", "/put").await, "stored");
    assert_eq!(
        on("alpha", "/keys?named").await,
        r#"["GET https://data.example/item","GET https://data.example/item"]"#
    );
    assert_eq!(on("alpha", "/drop").await, "true");
    assert_eq!(on("alpha", "/keys?named").await, "[]");
    assert_eq!(on("alpha", "/drop").await, "false");
    assert_eq!(on("alpha", "/match?named").await, "none");
    assert_eq!(on("alpha", "/match").await, format!("200 {value}"));
    let beta_value = format!("value of beta.localhost {}", "x".repeat(100));
    assert_eq!(
        on("beta", "/match?named").await,
        format!("200 {beta_value}")
    );

    let errors: Vec<String> = serde_json::from_str(&on("alpha", "/errors").await).unwrap();
    assert_eq!(
        errors,
        [
            "TypeError: Cannot cache response to non-GET request.",
            "TypeError: Cannot cache response to a range request (206 Partial Content).",
            "TypeError: Cannot cache response with 'Vary: *' header.",
            "TypeError: Invalid URL: 'not a url'",
            "TypeError: Cache name is too long.",
            "Error: The 'ignoreSearch' field on 'CacheQueryOptions' is not implemented.",
            "TypeError: Body has already been used. It can only be used once. Use tee() first if you need to read it twice.",
            "undefined",
            "false",
        ]
    );
}

fn deploy(dir: &Path, origin: &str) {
    let (ok, _, err) = outpost(
        &["deploy", dir.to_str().unwrap(), "--origin", origin],
        Some(DEPLOY),
    );
    assert!(ok, "{err}");
}

/// The host every PoP serves the app on, so that its URLs are the same on each.
const SITE: [(&str, &str); 1] = [("host", "site.localhost")];

/// GETs `path` on `node` until `check` holds for the answer (a deploy or purge travelling).
async fn until(node: &Node, path: &str, what: &str, check: impl Fn(&Answer) -> bool) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(answer) = try_fetch(node, path, &SITE).await {
            if check(&answer) {
                return answer;
            }
        }
        assert!(Instant::now() < deadline, "{}: never {what}", node.url);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn purges_by_tag_and_url_reach_every_pop() {
    let origin_data = tempfile::tempdir().unwrap();
    let origin = Node::origin_with_tokens(origin_data.path(), &[]);
    let site = app("site", HANDLER);
    deploy(site.path(), &origin.url);
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pops = [
        Node::pop(&origin.url, data_a.path(), "a", POP, &[]),
        Node::pop(&origin.url, data_b.path(), "b", POP, &[]),
    ];
    let tagged = "/t?cc=public,max-age=600&tag=blue,news";
    let other = "/o?cc=public,max-age=600&tag=green";
    for pop in &pops {
        until(pop, tagged, "served", |a| a.status == 200).await;
        until(pop, other, "served", |a| a.status == 200).await;
        assert!(fetch(pop, tagged, &SITE).await.hit());
        assert!(fetch(pop, other, &SITE).await.hit());
    }
    let purge = |args: &[&str]| {
        let mut all = vec!["purge", "site", "--origin", origin.url.as_str()];
        all.extend_from_slice(args);
        let (ok, out, err) = outpost(&all, Some(DEPLOY));
        assert!(ok, "{out}{err}");
    };
    purge(&["--tag", "news"]);
    for pop in &pops {
        let fresh = until(pop, tagged, "purged by tag", |a| a.call() == 2).await;
        assert!(!fresh.hit());
        // Untagged with it: still cached.
        let kept = fetch(pop, other, &SITE).await;
        assert!(kept.hit() && kept.call() == 1, "{}", kept.cache_status());
    }
    // By URL: http: and https: alike.
    purge(&["--url", &format!("https://site.localhost{other}")]);
    for pop in &pops {
        until(pop, other, "purged by URL", |a| a.call() == 2).await;
    }
    // A purge needs the deploy token, and names something.
    let (ok, _, err) = outpost(
        &["purge", "site", "--all", "--origin", &origin.url],
        Some(POP),
    );
    assert!(!ok, "a PoP token purged");
    assert!(
        err.contains("403") || err.to_lowercase().contains("forbidden"),
        "{err}"
    );
    let (ok, _, _) = outpost(&["purge", "site", "--origin", &origin.url], Some(DEPLOY));
    assert!(!ok, "a purge of nothing in particular was accepted");
    purge(&["--all"]);
    for pop in &pops {
        until(pop, tagged, "purged entirely", |a| a.call() == 3).await;
    }
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart() {
    let origin_data = tempfile::tempdir().unwrap();
    let origin = Node::origin_with_tokens(origin_data.path(), &[]);
    let site = app("site", HANDLER);
    deploy(site.path(), &origin.url);
    let data = tempfile::tempdir().unwrap();
    let path = "/kept?cc=public,max-age=600";
    {
        let pop = Node::pop(&origin.url, data.path(), "a", POP, &[]);
        until(&pop, path, "served", |a| a.status == 200).await;
        until(&pop, path, "a hit", |a| a.hit()).await;
        // The file is written behind the response: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_dir(data.path().join("cache"))
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "meta"))
        {
            assert!(
                Instant::now() < deadline,
                "nothing written to the disk tier"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Restarted on another port: the same URL (its host) finds it.
    let pop = Node::pop(&origin.url, data.path(), "a", POP, &[]);
    let after = fetch(&pop, path, &SITE).await;
    assert!(after.hit(), "{}", after.cache_status());
    assert_eq!(after.body, "/kept call 1 lang -");
}

/// Peak resident memory (VmHWM) of a process since its last reset, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_100_mb_body_is_cached_and_served_without_buffering() {
    const SIZE: usize = 100 << 20;
    let dir = app(
        "big",
        r#"
export default {
  fetch() {
    const chunk = new Uint8Array(65536);
    for (let i = 0; i < chunk.length; i++) chunk[i] = i % 251;
    let sent = 0;
    const body = new ReadableStream({
      pull(controller) {
        if (sent >= 100 * 1024 * 1024) return controller.close();
        controller.enqueue(chunk.slice());
        sent += chunk.length;
      },
    });
    return new Response(body, { headers: { "cache-control": "public, max-age=600" } });
  },
};
"#,
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(
        dir.path(),
        &["--cache-dir", cache_dir.path().to_str().unwrap()],
    );
    node.keep(dir);
    let read_all = |url: String| async move {
        let mut response = http1().get(url).send().await.unwrap();
        let status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_string();
        let mut length = 0usize;
        let mut sample_ok = true;
        while let Some(chunk) = response.chunk().await.unwrap() {
            for (i, byte) in chunk.iter().enumerate() {
                if (length + i) % 65536 % 251 != *byte as usize {
                    sample_ok = false;
                }
            }
            length += chunk.len();
        }
        (status, length, sample_ok)
    };
    let (status, length, intact) = read_all(node.url("/")).await;
    assert!(status.contains("stored"), "{status}");
    assert_eq!(length, SIZE);
    assert!(intact);
    // Stored once the file is complete (a request meanwhile waits for it).
    let pid = node.pid();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = peak_rss(pid);
    let (status, length, intact) = read_all(node.url("/")).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(length, SIZE);
    assert!(intact, "the cached body differs");
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "serving the cached body raised the node's peak memory by {} MiB",
        grown >> 20
    );
}

#[tokio::test]
async fn a_deploy_empties_the_apps_cache_unless_its_manifest_says_not_to() {
    let origin_data = tempfile::tempdir().unwrap();
    let origin = Node::origin_with_tokens(origin_data.path(), &[]);
    let version = |n: u32, keep: bool| {
        let manifest = if keep {
            "name = \"site\"\n[cache]\npurge_on_deploy = false\n".to_string()
        } else {
            "name = \"site\"\n".to_string()
        };
        app_dir(&[
            ("outpost.toml", &manifest),
            ("src/index.js", &format!("{HANDLER}\n// version {n}\n")),
        ])
    };
    let first = version(1, false);
    deploy(first.path(), &origin.url);
    let data = tempfile::tempdir().unwrap();
    let pop = Node::pop(&origin.url, data.path(), "a", POP, &[]);
    let path = "/d?cc=public,max-age=600";
    let hit = until(&pop, path, "a hit", |a| a.hit()).await;
    let serving = |a: &Answer| a.headers["x-outpost-version"].to_str().unwrap().to_string();
    let first_version = serving(&hit);
    // A new version that keeps the cache: still a hit, from the first version's call.
    let second = version(2, true);
    deploy(second.path(), &origin.url);
    let kept = until(&pop, path, "serving the second version", |a| {
        serving(a) != first_version
    })
    .await;
    assert!(kept.hit() && kept.call() == 1, "{}", kept.cache_status());
    // One that does not (the default): the next request reaches the new version.
    let third = version(3, false);
    deploy(third.path(), &origin.url);
    let fresh = until(&pop, path, "emptied by the deploy", |a| !a.hit()).await;
    assert_eq!(fresh.call(), 1, "the new version's first call");
}

#[tokio::test]
async fn what_the_cache_did_is_counted_in_the_metrics() {
    let dir = app("counted", HANDLER);
    let mut node = Node::start(dir.path(), &["--admin", "127.0.0.1:0"]);
    node.keep(dir);
    let admin = node.admin_url();
    let path = "/m?cc=public,max-age=60";
    fetch(&node, path, &[]).await;
    fetch(&node, path, &[]).await;
    fetch(&node, path, &[]).await;
    fetch(&node, "/m?uncached", &[]).await;
    let metrics = http1()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "outpost_cache_responses_total{app=\"counted\",result=\"hit\"} 2",
        "outpost_cache_responses_total{app=\"counted\",result=\"miss\"} 2",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    let memory = metrics
        .lines()
        .find(|l| l.starts_with("outpost_cache_bytes{tier=\"memory\"}"))
        .unwrap_or_else(|| panic!("no outpost_cache_bytes in\n{metrics}"));
    let bytes: u64 = memory.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes > 0, "{memory}");
}
