//! Bodies stream both ways: large uploads read whole or chunk by chunk, an upload piped
//! back as it arrives, and response chunks reaching the client as they are produced.

mod common;

use std::time::{Duration, Instant};

use common::{app, http1, http2, Node};
use serde_json::Value;

const HANDLER: &str = r#"
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/whole") {
      const buf = await request.arrayBuffer();
      const bytes = new Uint8Array(buf);
      let sum = 0;
      for (let i = 0; i < bytes.length; i += 4096) sum = (sum + bytes[i]) % 65536;
      return Response.json({ length: buf.byteLength, sum });
    }
    if (url.pathname === "/chunks") {
      let length = 0;
      let chunks = 0;
      const reader = request.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        length += value.length;
        chunks += 1;
      }
      return Response.json({ length, chunks });
    }
    if (url.pathname === "/echo") {
      return new Response(request.body);
    }
    if (url.pathname === "/big") {
      const size = Number(url.searchParams.get("mb")) * 1024 * 1024;
      let sent = 0;
      const chunk = new Uint8Array(64 * 1024).fill(120);
      return new Response(new ReadableStream({
        pull(controller) {
          if (sent >= size) return controller.close();
          controller.enqueue(chunk);
          sent += chunk.length;
        },
      }));
    }
    if (url.pathname === "/small") {
      const how = url.searchParams.get("how");
      if (how === "json") return Response.json(await request.json());
      if (how === "text") return new Response(await request.text());
      if (how === "form") return new Response((await request.formData()).get("a"));
      if (how === "clone") {
        const copy = request.clone();
        return new Response(`${await copy.text()}|${await request.text()}`);
      }
      if (how === "twice") {
        await request.arrayBuffer();
        const again = await request.text().then(() => "read twice", (e) => e.name);
        return new Response(`${request.bodyUsed} ${again}`);
      }
      if (how === "stream") {
        const parts = [];
        for await (const chunk of request.body) parts.push(new TextDecoder().decode(chunk));
        return new Response(parts.join(""));
      }
      if (how === "bytes") {
        const bytes = new Uint8Array(await request.arrayBuffer());
        return new Response(`${bytes.length}:${bytes.slice(0, 3).join(",")}`);
      }
      if (how === "blob") {
        const blob = await request.blob();
        return new Response(`${blob.size}:${await blob.text()}`);
      }
      if (how === "forward") {
        const inner = new Request("http://example.test/", { method: "POST", body: request.body });
        return new Response(await inner.text());
      }
    }
    if (url.pathname === "/ignore-body") {
      return new Response("ignored");
    }
    return new Response("not found", { status: 404 });
  },
};
"#;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn expected_sum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .step_by(4096)
        .fold(0u64, |sum, b| (sum + *b as u64) % 65536)
}

#[tokio::test]
async fn multi_megabyte_upload_via_array_buffer() {
    let dir = app("upload", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let body = payload(8 << 20);
    for client in [http1(), http2()] {
        let res = client
            .post(node.url("/whole"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let json: Value = res.json().await.unwrap();
        assert_eq!(json["length"], 8 << 20);
        assert_eq!(json["sum"], expected_sum(&body));
    }
}

#[tokio::test]
async fn multi_megabyte_upload_via_body_reader() {
    let dir = app("upload", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let res = http1()
        .post(node.url("/chunks"))
        .body(payload(5 << 20))
        .send()
        .await
        .unwrap();
    let json: Value = res.json().await.unwrap();
    assert_eq!(json["length"], 5 << 20);
    assert!(
        json["chunks"].as_u64().unwrap() >= 80,
        "read in bounded chunks: {json}"
    );
}

#[tokio::test]
async fn upload_streams_through_the_handler_as_it_arrives() {
    let dir = app("echo", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let request = http1()
        .post(node.url("/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let sender = tokio::spawn(async move {
        for i in 0..3 {
            tx.send(Ok(format!("part{i};").into_bytes())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let start = Instant::now();
    let mut res = request.await.unwrap();
    let first = res.chunk().await.unwrap().unwrap();
    let first_at = start.elapsed();
    assert_eq!(&first[..], b"part0;");
    let mut rest = Vec::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(rest).unwrap(), "part1;part2;");
    assert!(
        first_at < Duration::from_millis(500),
        "the echo waited for the whole upload: {first_at:?}"
    );
    sender.await.unwrap();
}

/// Small bodies with a Content-Length reach the handler whole (no stream underneath); every
/// way of reading them behaves as with a streamed body.
#[tokio::test]
async fn small_bodies_read_every_way() {
    let dir = app("small", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let json = r#"{"a":1,"list":[1,2,3],"s":"é"}"#;
    for client in [http1(), http2()] {
        let post = |how: &str, body: &str| {
            client
                .post(node.url(&format!("/small?how={how}")))
                .body(body.to_string())
        };
        let cases = [
            ("json", json, json),
            ("text", "plain text", "plain text"),
            ("form", "a=hello&b=2", "hello"),
            ("clone", "twin", "twin|twin"),
            ("twice", "once", "true TypeError"),
            ("stream", "streamed", "streamed"),
            ("forward", "forwarded", "forwarded"),
        ];
        // Declared as text or JSON, a UTF-8 body reaches JS as a string; otherwise as bytes.
        // Every way of reading it sees the same either way.
        for content_type in [
            None,
            Some("application/json"),
            Some("Text/Plain; charset=utf-8"),
        ] {
            for (how, body, expected) in cases {
                let mut request = post(how, body);
                if how == "form" {
                    request = request.header("content-type", "application/x-www-form-urlencoded");
                } else if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                let res = request.send().await.unwrap();
                assert_eq!(res.status(), 200, "{how} {content_type:?}");
                assert_eq!(
                    res.text().await.unwrap(),
                    expected,
                    "{how} {content_type:?}"
                );
            }
            // Lengths count bytes; a byte order mark is dropped by text() but kept by
            // arrayBuffer(); bytes that are not UTF-8 decode to U+FFFD.
            let bytes_cases: [(&str, &[u8], &str); 6] = [
                ("bytes", "é✓😀".as_bytes(), "9:195,169,226"),
                ("blob", "é✓😀".as_bytes(), "9:é✓😀"),
                ("text", b"\xEF\xBB\xBFbom", "bom"),
                ("bytes", b"\xEF\xBB\xBFbom", "6:239,187,191"),
                ("text", b"a\xFFb", "a\u{FFFD}b"),
                ("bytes", b"a\xFFb", "3:97,255,98"),
            ];
            for (how, body, expected) in bytes_cases {
                let mut request = client
                    .post(node.url(&format!("/small?how={how}")))
                    .body(body.to_vec());
                if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                let res = request.send().await.unwrap();
                assert_eq!(res.status(), 200, "{how} {body:?} {content_type:?}");
                assert_eq!(
                    res.text().await.unwrap(),
                    expected,
                    "{how} {body:?} {content_type:?}"
                );
            }
        }
    }
}

/// A small body that arrives slowly is waited for; one cut short is a 400, and the node
/// keeps serving.
#[tokio::test]
async fn small_bodies_that_arrive_slowly_or_never_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = app("slow", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let addr = node
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head =
        "POST /small?how=text HTTP/1.1\r\nhost: slow.localhost\r\ncontent-length: 10\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"01234").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(b"56789").await.unwrap();
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("0123456789"), "{answer}");

    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head =
        "POST /small?how=text HTTP/1.1\r\nhost: slow.localhost\r\ncontent-length: 10\r\n\r\n01234";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let res = http1()
        .post(node.url("/small?how=text"))
        .body("still serving")
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "still serving");
}

#[tokio::test]
async fn large_streamed_response() {
    let dir = app("big", HANDLER);
    let node = Node::start(dir.path(), &[]);
    let mut res = http2().get(node.url("/big?mb=16")).send().await.unwrap();
    let mut total = 0usize;
    while let Some(chunk) = res.chunk().await.unwrap() {
        assert!(chunk.iter().all(|b| *b == b'x'));
        total += chunk.len();
    }
    assert_eq!(total, 16 << 20);
}

#[tokio::test]
async fn unread_bodies_and_aborted_downloads_leave_the_node_serving() {
    let dir = app("ignore", HANDLER);
    let node = Node::start(dir.path(), &[]);
    for _ in 0..20 {
        let res = http1()
            .post(node.url("/ignore-body"))
            .body(payload(256 << 10))
            .send()
            .await
            .unwrap();
        assert_eq!(res.text().await.unwrap(), "ignored");
    }
    // Start a huge download and drop it after the first chunk.
    for _ in 0..5 {
        let mut res = http1().get(node.url("/big?mb=1024")).send().await.unwrap();
        assert!(res.chunk().await.unwrap().is_some());
        drop(res);
    }
    let res = http1().get(node.url("/big?mb=1")).send().await.unwrap();
    assert_eq!(res.bytes().await.unwrap().len(), 1 << 20);
}
