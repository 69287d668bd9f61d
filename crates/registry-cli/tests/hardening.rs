//! End-to-end tests of what no client may do to the server or to other clients, through real
//! sockets and real clients: answers sent before a request body was read reach clients that
//! are still sending (Python `requests`, oras-py, curl over HTTP/1.1 and HTTP/2, over TLS and
//! plain HTTP); connections that send nothing, stall a body or stop reading are closed; caps on
//! connections per address; a deadline for shutdown; requests hyper cannot parse get JSON
//! answers; client-chosen text cannot forge log lines.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{client_script, data, python, require_tool, sha256, Server};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const SIZES: [usize; 4] = [100_000, 1_000_000, 4_000_000, 20_000_000];

/// An instance with HTTP Basic over TLS and a plain listener beside it.
struct Guarded {
    server: Server,
    ca: std::path::PathBuf,
    plain: String,
    _dir: tempfile::TempDir,
}

fn guarded(extra_server: &str) -> Guarded {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let authority = Ca::new("hardening CA");
    let (cert, key) = authority.server().write(&dir, "server.pem", "server.key");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, authority.pem()).unwrap();
    let htpasswd = dir.join("htpasswd");
    let hash = bcrypt::hash("ann-secret", 4).unwrap();
    std::fs::write(&htpasswd, format!("ann:{hash}\n")).unwrap();
    let plain = format!("127.0.0.1:{}", common::free_port());
    let cfg = dir.join("registry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\n{extra_server}\n[tls]\ncert = {cert:?}\nkey = {key:?}\nplain_listen = {plain:?}\n[auth]\nhtpasswd = {htpasswd:?}\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    wait_for(&plain);
    Guarded {
        server,
        ca,
        plain,
        _dir: tmp,
    }
}

fn wait_for(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every answer the early-refusal script saw: (method, size, status or error).
fn python_early_refusals(base: &str, ca: Option<&Path>) -> Vec<Value> {
    let sizes: Vec<String> = SIZES.iter().map(|s| s.to_string()).collect();
    let out = Command::new(python())
        .arg(client_script("early_refusal.py"))
        .arg(base)
        .arg(ca.map_or("-".into(), |p| p.display().to_string()))
        .args(&sizes)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_clients_still_sending_their_body() {
    let g = guarded("");
    let tls_base = format!("https://{}", g.server.addr);
    let plain_base = format!("http://{}", g.plain);
    for (base, ca) in [(&tls_base, Some(g.ca.as_path())), (&plain_base, None)] {
        let seen = tokio::task::block_in_place(|| python_early_refusals(base, ca));
        assert_eq!(seen.len(), SIZES.len() * 3);
        for answer in &seen {
            assert_eq!(answer["status"], 401, "Python requests on {base}: {answer}");
            assert_eq!(answer["code"], "UNAUTHORIZED", "{answer}");
        }
    }
    // curl over HTTP/2 (ALPN over TLS; prior knowledge over plain HTTP) and HTTP/1.1.
    let curl = require_tool("curl");
    let dir = tempfile::tempdir().unwrap();
    for size in SIZES {
        let body = dir.path().join(format!("body-{size}"));
        std::fs::write(&body, vec![7u8; size]).unwrap();
        let upload = "/v2/early/blobs/uploads/0b4e4a6c-4a5e-4c55-9a3c-2f1b6d8e9a10";
        for (base, flags) in [
            (
                &tls_base,
                vec!["--http2", "--cacert", g.ca.to_str().unwrap()],
            ),
            (
                &tls_base,
                vec!["--http1.1", "--cacert", g.ca.to_str().unwrap()],
            ),
            (&plain_base, vec!["--http2-prior-knowledge"]),
            (&plain_base, vec!["--http1.1"]),
        ] {
            let out = Command::new(&curl)
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{http_version}",
                ])
                .args(["-X", "PATCH", "--data-binary"])
                .arg(format!("@{}", body.display()))
                .args(&flags)
                .arg(format!("{base}{upload}"))
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.starts_with("401 "),
                "curl {flags:?} {size} bytes to {base}: {said} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_py_chunked_push_with_basic_auth() {
    let g = guarded("");
    let dir = tempfile::tempdir().unwrap();
    // Two 16 MiB chunks and a small one: each PATCH is sent without credentials first.
    let file = dir.path().join("artifact.bin");
    let bytes = data(33 * 1024 * 1024 + 5, 21);
    std::fs::write(&file, &bytes).unwrap();
    let tls_host = g.server.addr.clone();
    for (host, scheme, ca) in [
        (tls_host.as_str(), "https", g.ca.display().to_string()),
        (g.plain.as_str(), "http", "-".to_owned()),
    ] {
        let out = tokio::task::block_in_place(|| {
            Command::new(python())
                .arg(client_script("oras_push.py"))
                .args([host, scheme, &ca, "ann", "ann-secret"])
                .arg(&file)
                .output()
                .unwrap()
        });
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "oras-py over {scheme}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(said.trim(), format!("ok {}", sha256(&bytes)));
    }
}

/// Reads until the server closes; returns what it sent and how long that took.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, start.elapsed())
            }
            Err(e) => panic!("not closed within {limit:?} ({e}); got {:?}", got.len()),
        }
    }
}

async fn metric(http: &Client, base: &str, line: &str) -> u64 {
    let text = common::metrics_text(http, base).await;
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_hang_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        "[server]\nhandshake_timeout = \"1s\"\nidle_timeout = \"2s\"\nbody_timeout = \"2s\"\nmax_connections_per_address = 20\n",
    )
    .unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let http = Client::new();
    let base = server.url();

    // A connection that sends nothing is closed after the handshake timeout.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    let (got, took) = read_until_closed(&mut silent, Duration::from_secs(10));
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // A kept-alive connection with nothing in flight is closed after the idle timeout.
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (got, took) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // A request head that trickles in, a byte a second, is cut off after the idle timeout
    // too: the bound is on the whole head, not on each read.
    let mut trickle = TcpStream::connect(&server.addr).unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let started = Instant::now();
    trickle.write_all(b"GET /v2/ HTTP/1.1\r\nX-Slow: ").unwrap();
    let closed = loop {
        let mut buf = [0u8; 512];
        match trickle.read(&mut buf) {
            Ok(_) => break started.elapsed(), // an answer, or the end: either way cut off
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break started.elapsed(),
        }
        if trickle.write_all(b"a").is_err() || started.elapsed() > Duration::from_secs(15) {
            break started.elapsed();
        }
    };
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_secs(8),
        "{closed:?}"
    );

    // A body that stops arriving gets 408 with the JSON error, and the connection closes.
    let location = common::start_upload(&http, &base, "slow").await;
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    write!(
        stalled,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabcd"
    )
    .unwrap();
    let (got, took) = read_until_closed(&mut stalled, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout"), "{text}");
    assert!(text.contains(r#""code":"REQUEST_TIMEOUT""#), "{text}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    // Nothing of it was kept: the session is where it was.
    let r = http.get(format!("{base}{location}")).send().await.unwrap();
    assert_eq!(r.headers()["range"], "0-0");

    // A client that stops reading a response is dropped after the body timeout.
    let blob = data(64 << 20, 3);
    let digest = sha256(&blob);
    let r = http
        .post(format!("{base}/v2/slow/blobs/uploads/?digest={digest}"))
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut reader = TcpStream::connect(&server.addr).unwrap();
    write!(
        reader,
        "GET /v2/slow/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let dropped = "registry_connections_closed_total{reason=\"send_timeout\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&http, &base, dropped).await == 0 {
        assert!(
            Instant::now() < deadline,
            "a client that does not read is never dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(reader);

    // At most 20 connections from one address; the next is closed at once; others still get in.
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&server.addr).unwrap();
    let (got, took) = read_until_closed(&mut extra, Duration::from_secs(5));
    assert!(
        got.is_empty() && took < Duration::from_millis(800),
        "{took:?}"
    );
    let elsewhere = Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = elsewhere.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let refused = "registry_connections_refused_total{reason=\"per_address\"}";
    assert!(metric(&elsewhere, &base, refused).await >= 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_requests_only_so_long() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(&cfg, "[server]\nshutdown_timeout = \"2s\"\n").unwrap();
    let mut server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let http = Client::new();
    let location = common::start_upload(&http, &server.url(), "held").await;
    // A request whose body stalls (within the 60 s body timeout) keeps its connection busy.
    let mut held = TcpStream::connect(&server.addr).unwrap();
    write!(
        held,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabcd"
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let clean = tokio::task::block_in_place(|| server.terminate());
    let took = start.elapsed();
    assert!(clean, "exit status");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(6),
        "stopped after {took:?}"
    );
}

/// What the server answers to raw bytes on a fresh connection, until it closes.
fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    // The server may answer (and close) before all of a huge request is written.
    let _ = s.write_all(request);
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10));
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn requests_too_big_to_parse_get_json_answers() {
    let server = Server::start(&[]);
    let long_uri = format!(
        "GET /v2/{}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let big_headers = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..500)
            .map(|i| format!("x-filler-{i}: {}\r\n", "y".repeat(1000)))
            .collect::<String>()
    );
    for (request, status, code) in [
        (long_uri.clone(), "414", "URI_TOO_LONG"),
        (big_headers.clone(), "431", "HEADERS_TOO_LARGE"),
        (
            "GET /v2/ HTTP/1.1\r\nHost x\r\n\r\n".to_owned(),
            "400",
            "BAD_REQUEST",
        ),
    ] {
        // On a fresh connection, and after a request on a kept-alive one.
        for after in ["", "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"] {
            let answer = raw(&server.addr, format!("{after}{request}").as_bytes());
            let last = answer.rfind("HTTP/1.1 ").unwrap_or(0);
            let answer = &answer[last..];
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{answer}"
            );
            assert!(
                answer.contains("content-type: application/json"),
                "{answer}"
            );
            assert!(answer.contains(&format!(r#""code":"{code}""#)), "{answer}");
        }
    }
    // The server is unharmed.
    let r = Client::new()
        .get(format!("{}/v2/", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn client_chosen_names_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("ann-secret", 4).unwrap();
    std::fs::write(&htpasswd, format!("ann:{hash}\n")).unwrap();
    let server = Server::start_logged(&["--htpasswd", htpasswd.to_str().unwrap()]);
    // (A user name cannot hold ':', which ends it in Basic credentials.)
    let evil = "evil2\n2026-12-01T00.00.00Z  INFO login OK user=admin \u{1b}]0;pwned\u{7}";
    let r = Client::new()
        .get(format!("{}/v2/", server.url()))
        .basic_auth(evil, Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.logged().contains("failed login") {
        assert!(Instant::now() < deadline, "no failed login logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.logged();
    assert!(
        !log.contains('\u{1b}'),
        "an escape reached the log: {log:?}"
    );
    assert!(!log.contains('\u{7}'), "a bell reached the log: {log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-01T00.00.00Z")),
        "a forged line: {log}"
    );
    assert!(
        log.contains(
            r"user=evil2\n2026-12-01T00.00.00Z  INFO login OK user=admin \u{1b}]0;pwned\u{7}"
        ),
        "{log}"
    );
}
