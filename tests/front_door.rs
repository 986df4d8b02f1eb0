//! The front door with real clients: HTTPS over HTTP/1.1 and HTTP/2 (reqwest and curl),
//! certificates picked by SNI and reloaded without a restart, an unknown SNI, the
//! development certificate of `outpost dev --https`, header limits (431), a slowloris client
//! cut off while others are served, 100 concurrent streams on one HTTP/2 connection, and a
//! graceful shutdown that finishes the request in flight.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{app, http1, http2, Node, DEPLOY, POP};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

const URL_APP: &str = "export default { fetch(request) { return new Response(request.url); } };\n";

/// `/slow` streams six dots 400 ms apart (2.8 s in all); any other path answers `quick`.
const SLOW_STREAM_APP: &str = "export default { fetch(request) {\n\
   if (new URL(request.url).pathname !== '/slow') return new Response('quick');\n\
   let i = 0;\n\
   return new Response(new ReadableStream({ async pull(c) {\n\
     await new Promise(r => setTimeout(r, 400));\n\
     if (i++ < 6) c.enqueue(new TextEncoder().encode('.')); else c.close();\n\
   } }));\n\
 } };\n";

/// Answers `METHOD PATH BODY`.
const ECHO_APP: &str = "export default { async fetch(request) {\n\
   const path = new URL(request.url).pathname;\n\
   return new Response(`${request.method} ${path} ${await request.text()}`);\n\
 } };\n";

/// `outpost dev PATH --https 127.0.0.1:0 ARGS…` with its own OUTPOST_HOME; the node and its
/// HTTPS address.
fn https_node(path: &Path, home: &Path, args: &[&str]) -> (Node, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    command
        .arg("dev")
        .arg(path)
        .args(["--https", "127.0.0.1:0"])
        .args(args)
        .env("OUTPOST_HOME", home);
    let mut node = Node::spawn(command);
    let addr = node.https_addr();
    (node, addr)
}

/// An HTTPS client trusting `ca_pem`, resolving every name in `hosts` to `addr`.
fn https_client(ca_pem: &[u8], addr: SocketAddr, hosts: &[&str]) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .timeout(Duration::from_secs(30));
    for host in hosts {
        builder = builder.resolve(host, addr);
    }
    builder
}

/// A certificate authority for tests, and certificates it signs.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test authority");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A `.pem` (chain and key) for `names`, with serial `serial` to tell copies apart.
    fn leaf(&self, names: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| SanType::DnsName(n.to_string().try_into().unwrap()))
            .collect();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }
}

#[tokio::test]
async fn dev_https_serves_http1_and_http2_with_https_urls() {
    let home = tempfile::tempdir().unwrap();
    let site = app("site", URL_APP);
    let (node, addr) = https_node(site.path(), home.path(), &[]);
    let ca = std::fs::read(home.path().join("dev-tls/ca.pem")).unwrap();
    assert!(
        node.stdout()
            .iter()
            .any(|l| l.contains("trust") && l.contains("ca.pem")),
        "{:?}",
        node.stdout()
    );
    let port = addr.port();
    for (version, client) in [
        (
            reqwest::Version::HTTP_11,
            https_client(&ca, addr, &["site.localhost"]).http1_only(),
        ),
        (
            reqwest::Version::HTTP_2,
            https_client(&ca, addr, &["site.localhost"]),
        ),
    ] {
        let res = client
            .build()
            .unwrap()
            .get(format!("https://site.localhost:{port}/path?q=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.version(), version);
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.text().await.unwrap(),
            format!("https://site.localhost:{port}/path?q=1")
        );
    }
    // curl, negotiating HTTP/2 by ALPN.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "-w", "\n%{http_version}", "--cacert"])
        .arg(home.path().join("dev-tls/ca.pem"))
        .arg("--resolve")
        .arg(format!("site.localhost:{port}:127.0.0.1"))
        .arg(format!("https://site.localhost:{port}/c"))
        .output()
        .expect("curl is installed (tests/install-services.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [&*format!("https://site.localhost:{port}/c"), "2"]
    );
    // Cleartext goes on as before, with http: URLs.
    let (status, body) = common::get(&node, "/x").await;
    assert_eq!((status, body.starts_with("http://")), (200, true), "{body}");
}

#[tokio::test]
async fn sni_picks_the_certificate_unknown_names_fail_and_new_certificates_load_live() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("a.pem"), ca.leaf(&["a.test"])).unwrap();
    std::fs::write(certs.path().join("b.pem"), ca.leaf(&["*.b.test", "b.test"])).unwrap();
    let home = tempfile::tempdir().unwrap();
    let site = app("site", URL_APP);
    let certs_arg = certs.path().to_str().unwrap();
    let (node, addr) = https_node(site.path(), home.path(), &["--certs", certs_arg]);
    let port = addr.port();
    let hosts = ["a.test", "b.test", "www.b.test", "c.test"];
    let client = || {
        https_client(ca.pem.as_bytes(), addr, &hosts)
            .build()
            .unwrap()
    };
    // The client checks the name: each host answering proves its own certificate was sent.
    for host in ["a.test", "b.test", "www.b.test"] {
        let res = client()
            .get(format!("https://{host}:{port}/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(res.status(), 200, "{host}");
    }
    // No certificate names c.test and there is no default: the handshake fails.
    let err = client()
        .get(format!("https://c.test:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // A certificate for c.test dropped into the directory serves without a restart.
    std::fs::write(certs.path().join("c.pem"), ca.leaf(&["c.test"])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(res) = client().get(format!("https://c.test:{port}/")).send().await {
            assert_eq!(res.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c.test never served: {:?}",
            node.stdout()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file does not take the others down.
    std::fs::write(certs.path().join("d.pem"), "garbage").unwrap();
    let mut node = node;
    node.wait_for_stderr("certificates not reloaded", Duration::from_secs(20));
    let res = client()
        .get(format!("https://a.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn an_unknown_sni_gets_the_default_certificate_when_there_is_one() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("a.pem"), ca.leaf(&["a.test"])).unwrap();
    let fallback = tempfile::tempdir().unwrap();
    let default_pem = fallback.path().join("default.pem");
    std::fs::write(&default_pem, ca.leaf(&["default.test"])).unwrap();
    let home = tempfile::tempdir().unwrap();
    let site = app("site", URL_APP);
    let (_node, addr) = https_node(
        site.path(),
        home.path(),
        &[
            "--certs",
            certs.path().to_str().unwrap(),
            "--default-cert",
            default_pem.to_str().unwrap(),
        ],
    );
    // Asked for other.test, the server sends default.test's certificate: a client that
    // checks names refuses it, one that checks only the chain sees default.test.
    let strict = https_client(ca.pem.as_bytes(), addr, &["other.test"])
        .build()
        .unwrap();
    let err = strict
        .get(format!("https://other.test:{}/", addr.port()))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    let lenient = https_client(ca.pem.as_bytes(), addr, &["other.test"])
        .danger_accept_invalid_hostnames(true)
        .tls_info(true)
        .build()
        .unwrap();
    let res = lenient
        .get(format!("https://other.test:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    let info = res.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    let der = info.peer_certificate().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"default.test\")]"
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let site = app("site", URL_APP);
    let node = Node::start(
        site.path(),
        &["--max-headers", "50", "--max-header-bytes", "16384"],
    );
    let big = "x".repeat(20_000);
    let res = http1()
        .get(node.url("/"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    let mut request = http1().get(node.url("/"));
    for i in 0..60 {
        request = request.header(format!("x-h{i}"), "v");
    }
    assert_eq!(request.send().await.unwrap().status(), 431);
    // Within the limits, fine; over HTTP/2 too big a header list is refused as well.
    assert_eq!(
        http1().get(node.url("/")).send().await.unwrap().status(),
        200
    );
    let h2 = http2()
        .get(node.url("/"))
        .header("x-big", &big)
        .send()
        .await;
    assert!(h2.as_ref().map_or(true, |r| r.status() == 431), "{h2:?}");
}

/// A plain TCP connection to `addr` for writing HTTP/1.1 by hand; reads give up after 20 s.
fn raw_connection(addr: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads one HTTP/1.1 response: its status line, its headers (names lowercased) and its
/// body, delimited as the headers say (none for a response to HEAD).
fn read_response(
    stream: &mut impl std::io::BufRead,
    head_only: bool,
) -> (String, Vec<(String, String)>, String) {
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    let status = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).unwrap();
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head_only {
    } else if let Some(length) = header("content-length") {
        body.resize(length.parse().unwrap(), 0);
        stream.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            line.clear();
            stream.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        stream.read_to_end(&mut body).unwrap();
    }
    (status, headers, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn http1_requests_pipelined_on_one_connection_are_answered_in_order() {
    let site = app("site", ECHO_APP);
    for http1 in ["deno-h1", "hyper"] {
        let node = Node::start(site.path(), &["--http1", http1]);
        let addr = node.url.trim_start_matches("http://").to_string();
        tokio::task::spawn_blocking(move || pipelined_requests(&addr))
            .await
            .unwrap();
    }
}

/// Requests on raw connections to `addr` (an app of [`ECHO_APP`]): pipelined, with and
/// without bodies, a body that follows its head, HTTP/1.0.
fn pipelined_requests(addr: &str) {
    let mut stream = raw_connection(addr);
    // Bodies whole with their heads, a HEAD, then a chunked body and a body that
    // comes after its head (hyper answers those and what follows on the connection).
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: site\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: site\r\nContent-Length: 5\r\n\r\nhello\
              HEAD /three HTTP/1.1\r\nHost: site\r\n\r\n\
              POST /four HTTP/1.1\r\nHost: site\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nworld\r\n0\r\n\r\n\
              GET /five HTTP/1.1\r\nHost: site\r\n\r\n",
        )
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut answers = Vec::new();
    for head_only in [false, false, true, false, false] {
        let (status, headers, body) = read_response(&mut reader, head_only);
        assert_eq!(status, "HTTP/1.1 200 OK", "{headers:?}");
        assert!(
            headers.iter().any(|(name, _)| name == "date"),
            "{headers:?}"
        );
        answers.push(body);
    }
    assert_eq!(
        answers,
        [
            "GET /one ",
            "POST /two hello",
            "",
            "POST /four world",
            "GET /five "
        ]
    );
    // A new connection whose body follows its head a moment later.
    let mut stream = raw_connection(addr);
    stream
        .write_all(b"POST /six HTTP/1.1\r\nHost: site\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream
        .write_all(b"helloGET /seven HTTP/1.1\r\nHost: site\r\n\r\n")
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    assert_eq!(read_response(&mut reader, false).2, "POST /six hello");
    assert_eq!(read_response(&mut reader, false).2, "GET /seven ");
    // A head sent a byte at a time.
    let mut stream = raw_connection(addr);
    for byte in b"GET /slow HTTP/1.1\r\nHost: site\r\nX-Pad: 0123456789\r\n\r\n" {
        stream.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let mut reader = std::io::BufReader::new(stream);
    assert_eq!(read_response(&mut reader, false).2, "GET /slow ");
    // HTTP/1.0: answered in kind, then the connection closes.
    let mut stream = raw_connection(addr);
    stream
        .write_all(b"GET /eight HTTP/1.0\r\nHost: site\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nGET /eight "), "{answer}");
}

/// Answers by path: `/empty` 204, `/not-modified` 304 (`/not-modified-sized` with a
/// `content-length`), `/stream` a body of unknown length, `/teapot` 418 with a header of
/// its own, `/sized` no body but a `content-length` (for HEAD); else `METHOD PATH BODY`.
const STATUS_APP: &str = "export default { async fetch(request) {\n\
   const path = new URL(request.url).pathname;\n\
   const bytes = (text) => new TextEncoder().encode(text);\n\
   switch (path) {\n\
     case '/empty': return new Response(null, { status: 204 });\n\
     case '/not-modified': return new Response(null, { status: 304, headers: { etag: '\"a\"' } });\n\
     case '/stream': return new Response(new ReadableStream({ start(c) {\n\
       c.enqueue(bytes('a')); c.enqueue(bytes('bc')); c.close();\n\
     } }));\n\
     case '/teapot': return new Response('short and stout', { status: 418, headers: { 'x-a': '1' } });\n\
     case '/sized': return new Response(null, { headers: { 'content-length': '1234' } });\n\
     case '/not-modified-sized': return new Response(null, { status: 304, headers: { 'content-length': '42' } });\n\
     default: return new Response(`${request.method} ${path} ${await request.text()}`);\n\
   }\n\
 } };\n";

/// What a raw exchange answered, without what differs from request to request (`date`,
/// `x-request-id`, `server-timing`), headers sorted.
fn exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = raw_connection(addr);
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    let mut headers: Vec<&str> = lines
        .filter(|line| {
            !["date:", "x-request-id:", "server-timing:"]
                .iter()
                .any(|volatile| line.starts_with(volatile))
        })
        .collect();
    headers.sort();
    format!("{status}\n{}\n\n{body}", headers.join("\n"))
}

#[tokio::test]
async fn deno_h1_and_hyper_answer_http1_alike() {
    let site = app("site", STATUS_APP);
    let requests: [&[u8]; 11] = [
        b"GET /teapot HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        b"HEAD /teapot HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        b"GET /empty HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        b"GET /not-modified HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        b"GET /stream HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: site\r\nConnection: close\r\nContent-Length: 3\r\n\r\nxyz",
        b"GET /stream HTTP/1.0\r\nHost: site\r\n\r\n",
        b"GET /teapot HTTP/1.0\r\nHost: site\r\n\r\n",
        b"HEAD /sized HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        b"HEAD /empty HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
        b"GET /not-modified-sized HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
    ];
    let mut answers = Vec::new();
    for http1 in ["deno-h1", "hyper"] {
        let node = Node::start(site.path(), &["--http1", http1]);
        let addr = node.url.trim_start_matches("http://").to_string();
        let answered =
            tokio::task::spawn_blocking(move || requests.map(|request| exchange(&addr, request)))
                .await
                .unwrap();
        answers.push(answered);
    }
    for (deno_h1, hyper) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(deno_h1, hyper);
    }
    assert!(
        answers[0][0].starts_with("HTTP/1.1 418 I'm a teapot\n"),
        "{}",
        answers[0][0]
    );
    // A body of unknown length: chunked on HTTP/1.1, until the close on HTTP/1.0.
    assert!(
        answers[0][4].contains("\ntransfer-encoding: chunked\n")
            && answers[0][4].ends_with("abc\r\n0\r\n\r\n"),
        "{}",
        answers[0][4]
    );
    assert!(answers[0][6].ends_with("\n\nabc"), "{}", answers[0][6]);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_without_hurting_others() {
    let site = app("site", URL_APP);
    let node = Node::start(site.path(), &["--header-timeout-ms", "1000"]);
    let addr = node.url.trim_start_matches("http://").to_string();
    let slow = std::thread::spawn(move || {
        let mut stream = raw_connection(&addr);
        let started = Instant::now();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: site\r\n")
            .unwrap();
        // One header byte every 200 ms, never finishing the head.
        let dripping = {
            let mut stream = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if stream.write_all(b"x").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let cut_after = started.elapsed();
        let _ = dripping.join();
        (cut_after, String::from_utf8_lossy(&answer).into_owned())
    });
    // Meanwhile everyone else is served.
    for _ in 0..10 {
        let (status, _) = common::get(&node, "/").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cut_after, answer) = slow.join().unwrap();
    assert!(
        cut_after < Duration::from_secs(15),
        "the slow client was cut off after {cut_after:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn one_http2_connection_carries_100_concurrent_streams() {
    // Each request holds its stream for a second and answers how many were open at once
    // at its end: 100 only if the connection carried all 100 together.
    let site = app(
        "site",
        "let open = 0; let peak = 0;\n\
         export default { async fetch() { open++; peak = Math.max(peak, open); await new Promise(r => setTimeout(r, 1000)); open--; return new Response(String(peak)); } };\n",
    );
    let node = Node::start(site.path(), &[]);
    let client = http2();
    // Distinct URLs: concurrent misses of one URL would wait for the first one's answer (the
    // cache coalesces them), which is not what this test is about.
    let requests = (0..100).map(|i| {
        let request = client.get(node.url(&format!("/?n={i}"))).send();
        async move {
            let res = request.await.unwrap();
            assert_eq!(res.version(), reqwest::Version::HTTP_2);
            assert_eq!(res.status(), 200);
            res.text().await.unwrap().parse::<u32>().unwrap()
        }
    });
    let peaks = futures::future::join_all(requests).await;
    assert_eq!(peaks.into_iter().max(), Some(100));
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_then_exits_0() {
    let site = app(
        "site",
        "export default { async fetch() { await new Promise(r => setTimeout(r, 1500)); return new Response('finished'); } };\n",
    );
    let mut node = Node::start(site.path(), &[]);
    let url = node.url("/");
    let in_flight = tokio::spawn(async move { http1().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let addr = node.url.trim_start_matches("http://").to_string();
    let status = tokio::task::spawn_blocking(move || {
        let status = node.terminate(Duration::from_secs(20));
        (status, node.stdout())
    });
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "finished");
    let (status, stdout) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(stdout.iter().any(|l| l.contains("drained")), "{stdout:?}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// One HTTP/3 exchange with an h3-quinn client trusting `ca_pem`: sends `chunks` as the
/// body (each its own DATA frame) and returns the response head and the body's chunks.
async fn h3_exchange(
    addr: SocketAddr,
    host: &str,
    ca_pem: &[u8],
    request: http::Request<()>,
    chunks: &[&[u8]],
) -> (http::Response<()>, Vec<bytes::Bytes>) {
    use bytes::Buf;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let connection = endpoint.connect(addr, host).unwrap().await.unwrap();
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .unwrap();
    let driving = tokio::spawn(async move {
        futures::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut stream = sender.send_request(request).await.unwrap();
    for chunk in chunks {
        stream
            .send_data(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.push(chunk.copy_to_bytes(chunk.remaining()));
    }
    drop(sender);
    driving.abort();
    endpoint.close(0u32.into(), b"done");
    (response, body)
}

#[tokio::test]
async fn http3_serves_the_same_apps_streaming_both_ways() {
    let home = tempfile::tempdir().unwrap();
    let site = app(
        "site",
        "export default { async fetch(request) {\n\
           const url = new URL(request.url);\n\
           if (url.pathname === '/upload') {\n\
             let chunks = 0, bytes = 0;\n\
             for await (const chunk of request.body) { chunks++; bytes += chunk.byteLength; }\n\
             return new Response(`${request.method} ${bytes} bytes`);\n\
           }\n\
           if (url.pathname === '/throw') throw new Error('broken');\n\
           if (url.pathname === '/stream') {\n\
             let i = 0;\n\
             const body = new ReadableStream({ async pull(c) {\n\
               await new Promise(r => setTimeout(r, 20));\n\
               if (i < 5) c.enqueue(new TextEncoder().encode(`part ${i++};`)); else c.close();\n\
             } });\n\
             return new Response(body);\n\
           }\n\
           return new Response(request.url + ' ' + (request.body === null ? 'no body' : 'body'));\n\
         } };\n",
    );
    let (_node, addr) = https_node(site.path(), home.path(), &[]);
    let ca = std::fs::read(home.path().join("dev-tls/ca.pem")).unwrap();
    let port = addr.port();

    // TLS responses announce HTTP/3 on the same port.
    let res = https_client(&ca, addr, &["site.localhost"])
        .build()
        .unwrap()
        .get(format!("https://site.localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["alt-svc"],
        format!("h3=\":{port}\"; ma=86400")
    );

    let get = http::Request::get(format!("https://site.localhost:{port}/hello?x=1"))
        .body(())
        .unwrap();
    let (head, body) = h3_exchange(addr, "site.localhost", &ca, get, &[]).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        body.concat(),
        format!("https://site.localhost:{port}/hello?x=1 no body").as_bytes()
    );

    // An upload in several DATA frames reaches the handler as a stream.
    let post = http::Request::post(format!("https://site.localhost:{port}/upload"))
        .body(())
        .unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let chunks: Vec<&[u8]> = (0..16).map(|_| chunk.as_slice()).collect();
    let (head, body) = h3_exchange(addr, "site.localhost", &ca, post, &chunks).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        body.concat(),
        format!("POST {} bytes", 16 * 64 * 1024).as_bytes()
    );

    // A streamed response arrives in pieces.
    let stream = http::Request::get(format!("https://site.localhost:{port}/stream"))
        .body(())
        .unwrap();
    let (head, body) = h3_exchange(addr, "site.localhost", &ca, stream, &[]).await;
    assert_eq!(head.status(), 200);
    assert_eq!(body.concat(), b"part 0;part 1;part 2;part 3;part 4;");
    assert!(body.len() > 1, "streamed in {} piece(s)", body.len());

    // Errors map as elsewhere: a handler that throws is a 500.
    let throw = http::Request::get(format!("https://site.localhost:{port}/throw"))
        .body(())
        .unwrap();
    let (head, _) = h3_exchange(addr, "site.localhost", &ca, throw, &[]).await;
    assert_eq!(head.status(), 500);
}

#[tokio::test]
async fn apps_bring_their_certificates_through_the_origin_to_pops() {
    let ca = TestCa::new();
    let shop = common::app_dir(&[
        (
            "outpost.toml",
            "name = \"shop\"\nroutes = [\"shop.test/*\"]\ncertificates = [\"certs/shop.pem\"]\n",
        ),
        ("src/index.js", URL_APP),
        ("certs/shop.pem", &ca.leaf(&["shop.test"])),
    ]);
    let origin_data = tempfile::tempdir().unwrap();
    let origin = Node::origin_with_tokens(origin_data.path(), &[]);
    let pop_data = tempfile::tempdir().unwrap();
    let mut pop = Node::pop(
        &origin.url,
        pop_data.path(),
        "edge",
        POP,
        &["--https", "127.0.0.1:0"],
    );
    let addr = pop.https_addr();
    let deploy = |dir: &Path| {
        common::outpost(
            &["deploy", dir.to_str().unwrap(), "--origin", &origin.url],
            Some(DEPLOY),
        )
    };
    let (ok, _, err) = deploy(shop.path());
    assert!(ok, "{err}");
    // The PoP has no certificate of its own: shop.test's came with the app.
    let client = https_client(ca.pem.as_bytes(), addr, &["shop.test"])
        .build()
        .unwrap();
    let url = format!("https://shop.test:{}/", addr.port());
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Ok(res) = client.get(&url).send().await {
            break res.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "{:?}", pop.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body, url);

    // An app may not bring a certificate for a host it does not serve.
    let thief = common::app_dir(&[
        (
            "outpost.toml",
            "name = \"thief\"\nroutes = [\"thief.test/*\"]\ncertificates = [\"certs/shop.pem\"]\n",
        ),
        ("src/index.js", URL_APP),
        ("certs/shop.pem", &ca.leaf(&["shop.test"])),
    ]);
    let (ok, _, err) = deploy(thief.path());
    assert!(!ok && err.contains("none of the app's routes"), "{err}");
    // Nor read its key from JavaScript.
    let peek = common::app_dir(&[
        (
            "outpost.toml",
            "name = \"shop\"\nroutes = [\"shop.test/*\"]\ncertificates = [\"certs/shop.pem\"]\n",
        ),
        (
            "src/index.js",
            "import pem from '../certs/shop.pem' with { type: 'text' };\nexport default { fetch() { return new Response(pem); } };\n",
        ),
        ("certs/shop.pem", &ca.leaf(&["shop.test"])),
    ]);
    let (ok, _, err) = deploy(peek.path());
    assert!(!ok && err.contains("cannot be imported"), "{err}");
    // The first version still serves, with its certificate.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

/// An HTTP/1.1 connection may wait at most the header timeout for its next request (a new
/// one that sends nothing, and a keep-alive one between requests), while a response that
/// streams for longer than that is not cut.
#[tokio::test]
async fn an_http1_connection_waits_the_header_timeout_for_a_request_but_a_long_response_is_not_cut()
{
    let site = app("site", SLOW_STREAM_APP);
    let node = Node::start(site.path(), &["--header-timeout-ms", "1000"]);
    let addr = node.url.trim_start_matches("http://").to_string();
    let connect = || raw_connection(&addr);
    // Reads until the connection closes; how long that took.
    let until_closed = |mut stream: std::net::TcpStream| {
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        (started.elapsed(), read.map(|_| rest))
    };

    // A connection that never sends a request.
    let (waited, read) = until_closed(connect());
    assert!(
        waited < Duration::from_secs(10),
        "a silent connection stayed open {waited:?}"
    );
    assert!(read.is_ok_and(|rest| rest.is_empty()));

    // A response streaming for ~2.8 s, past the 1 s timeout, arrives whole; then the
    // connection, idle between requests, is closed.
    let mut stream = connect();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: site\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"0\r\n\r\n") {
        let n = stream.read(&mut buf).expect("the response kept coming");
        assert!(n > 0, "cut off: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(response.matches(".\r\n").count(), 6, "{response}");
    let (waited, read) = until_closed(stream);
    assert!(
        waited < Duration::from_secs(10),
        "an idle keep-alive connection stayed open {waited:?}"
    );
    assert!(read.is_ok_and(|rest| rest.is_empty()));

    // Everyone else is served as before.
    let (status, body) = common::get(&node, "/").await;
    assert_eq!((status, body.as_str()), (200, "quick"));
}

/// A body handed over in one piece leaves the app at once but may take the client longer
/// than the header timeout to read: it arrives whole, and so does the next response.
#[tokio::test]
async fn a_large_response_read_slowly_is_not_cut_at_the_header_timeout() {
    const SIZE: usize = 32 << 20;
    let site = app(
        "site",
        &format!(
            "export default {{ fetch(request) {{\n\
               if (new URL(request.url).pathname === '/big') return new Response(new Uint8Array({SIZE}).fill(7));\n\
               return new Response('quick');\n\
             }} }};\n"
        ),
    );
    let node = Node::start(site.path(), &["--header-timeout-ms", "1000"]);
    let addr = node.url.trim_start_matches("http://").to_string();
    let reader = std::thread::spawn(move || {
        let mut stream = raw_connection(&addr);
        let started = Instant::now();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: site\r\n\r\n")
            .unwrap();
        // ~8 MiB/s: the 32 MiB take ~4 s, most of them waiting in the node's buffers.
        let mut received = Vec::with_capacity(SIZE + 1024);
        let mut buf = vec![0u8; 256 * 1024];
        let mut head_end = None;
        let head_end = loop {
            let n = stream.read(&mut buf).expect("the response kept coming");
            assert!(n > 0, "cut off after {} bytes", received.len());
            received.extend_from_slice(&buf[..n]);
            std::thread::sleep(Duration::from_millis(30));
            if head_end.is_none() {
                head_end = received
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|at| at + 4);
            }
            if let Some(end) = head_end.filter(|end| received.len() >= end + SIZE) {
                break end;
            }
        };
        let took = started.elapsed();
        let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
        let body = &received[head_end..];
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body.len(), SIZE);
        assert!(body.iter().all(|b| *b == 7));
        // The same connection serves the next request.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: site\r\n\r\n")
            .unwrap();
        let n = stream.read(&mut buf).unwrap();
        let next = String::from_utf8_lossy(&buf[..n]).into_owned();
        (took, next)
    });
    let (took, next) = reader.join().unwrap();
    assert!(
        took > Duration::from_millis(1500),
        "read in {took:?}: not slower than the header timeout, so this proves nothing"
    );
    assert!(
        next.starts_with("HTTP/1.1 200") && next.ends_with("quick"),
        "{next}"
    );
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let site = app("site", URL_APP);
    let node = Node::start(site.path(), &["--max-connections", "2"]);
    let addr = node.url.trim_start_matches("http://").to_string();
    // Two clients hold their connections open (idle, between requests).
    let hold = |addr: &str| {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: site\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stream
    };
    let first = hold(&addr);
    let _second = hold(&addr);
    // A third is accepted by the kernel but not served while both are held.
    let third = http1()
        .get(node.url("/"))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(third.is_err_and(|e| e.is_timeout()));
    // One closes: the next one is served.
    drop(first);
    let (status, _) = common::get(&node, "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_a_long_stream_is_not_cut() {
    use http_body_util::BodyExt;
    let site = app("site", SLOW_STREAM_APP);
    let node = Node::start(site.path(), &["--connection-idle-secs", "1"]);
    let addr = node.url.trim_start_matches("http://").to_string();
    let connect = || async {
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        (sender, tokio::spawn(connection))
    };
    let request = |path: &str| {
        http::Request::get(format!("http://site.localhost{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // A stream that lasts 2.4 s, longer than the idle timeout, finishes whole.
    let (mut sender, connection) = connect().await;
    let res = sender.send_request(request("/slow")).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"......");
    // Then, with nothing to do, the connection is closed by the node.
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the idle connection stayed open");
    // A fresh one works.
    let (mut sender, _connection) = connect().await;
    let res = sender.send_request(request("/")).await.unwrap();
    assert_eq!(res.status(), 200);
}
