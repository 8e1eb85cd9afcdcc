//! See [`super`]: the resources area of the security suite. Connections are bounded (timeouts
//! for headers, bodies, idle keep-alive and stalled readers; a cap on how many are open), a body
//! is never read before its sender is authenticated, and a stream client that stops reading
//! neither blocks metering nor shutdown; a stream read slowly holds a few MiB, whatever its
//! events' size (review item 2).

use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::{peak_rss_kib, spawn_serving, tollgate_env, Served};
use crate::harness;
use crate::mock;

/// The bound on waiting for anything here: far above what it takes, only there so a broken
/// server fails the test instead of hanging it.
const BOUND: Duration = harness::PATIENCE;

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

/// Polls `cond` every 20 ms until it holds (bounded).
async fn until<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    within(what, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one metric line (`name` includes its labels).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slowloris_and_slow_body_connections_are_closed() {
    let server = harness::start_with(|s| {
        s.set("header_read_timeout_ms", "300").unwrap();
        s.set("idle_timeout_ms", "300").unwrap();
        s.set("body_read_timeout_ms", "300").unwrap();
    })
    .await;
    let (_, key) = server.tenant("http://127.0.0.1:9/v1", "r1").await;
    let at = addr(&server.url);

    // A socket that never sends a byte.
    let mut idle = TcpStream::connect(&at).await.unwrap();
    let sent = within("an idle socket is closed", read_until_closed(&mut idle)).await;
    assert!(sent.is_empty());

    // A kept-alive connection left idle after its request.
    let mut kept = TcpStream::connect(&at).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let sent = within(
        "an idle kept-alive connection is closed",
        read_until_closed(&mut kept),
    )
    .await;
    assert!(
        sent.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&sent)
    );

    // Slowloris: headers a byte at a time, never finished.
    let mut slow = TcpStream::connect(&at).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nx-pad: ")
        .await
        .unwrap();
    within("a slowloris client is closed", async {
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                r = slow.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if slow.write_all(b"a").await.is_err() { return }
                }
            }
        }
    })
    .await;

    // A body that stops arriving: 408 in the data plane's envelope.
    let mut body = TcpStream::connect(&at).await.unwrap();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-portkey-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":");
    body.write_all(head.as_bytes()).await.unwrap();
    let sent = within("a slow body is answered", read_until_closed(&mut body)).await;
    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("body_read_timeout_ms"), "{sent}");

    let text = metrics(&server.url).await;
    assert!(
        metric(
            &text,
            "tollgate_connections_timed_out_total{reason=\"header_read\"}"
        ) >= 2
    );
    assert!(
        metric(
            &text,
            "tollgate_connections_timed_out_total{reason=\"idle\"}"
        ) >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_until_idle_ones_time_out() {
    let server = harness::start_with(|s| {
        s.set("max_connections", "3").unwrap();
        s.set("header_read_timeout_ms", "2000").unwrap();
    })
    .await;
    let at = addr(&server.url);
    let open = || server.metrics().connections_open.load(Ordering::SeqCst);
    until("earlier connections are closed", || async { open() == 0 }).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&at).await.unwrap());
    }
    until("three connections are open", || async { open() == 3 }).await;

    let mut fourth = TcpStream::connect(&at).await.unwrap();
    let sent = within(
        "the fourth connection is refused",
        read_until_closed(&mut fourth),
    )
    .await;
    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.starts_with("HTTP/1.1 503"), "{sent}");
    assert!(
        sent.ends_with("\"code\":\"too_many_connections\"}}"),
        "{sent}"
    );
    assert_eq!(
        server.metrics().connections_refused.load(Ordering::SeqCst),
        1
    );

    // The idle ones time out (the server closes them), and then a normal request is served.
    for mut idle in held {
        within("an idle connection is closed", read_until_closed(&mut idle)).await;
    }
    let url = format!("{}/healthz", server.url);
    until("a normal request succeeds", || async {
        reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let text = metrics(&server.url).await;
    assert!(metric(&text, "tollgate_connections_refused_total") >= 1);
    let now_open = metric(&text, "tollgate_connections_open");
    assert!((1..=3).contains(&now_open), "{now_open}");
    assert!(
        metric(
            &text,
            "tollgate_connections_timed_out_total{reason=\"header_read\"}"
        ) >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_posts_are_refused_before_their_body_is_sent() {
    let server = harness::start().await;
    let at = addr(&server.url);
    let bad_key = "tg_this_key_does_not_exist_0000000000";
    for (path, key) in [
        ("/v1/chat/completions", Some(bad_key)),
        ("/v1/chat/completions", None),
        ("/v1/embeddings", Some(bad_key)),
        ("/v1/admin/workspaces", Some(bad_key)),
        ("/v1/api-keys/workspace/service", None),
        ("/v1/configs", Some(bad_key)),
    ] {
        let mut s = TcpStream::connect(&at).await.unwrap();
        let key = key.map_or(String::new(), |k| format!("x-portkey-api-key: {k}\r\n"));
        // The headers of a 10 MiB body, then nothing: the answer must not wait for the body.
        let head = format!("POST {path} HTTP/1.1\r\nhost: t\r\n{key}content-type: application/json\r\ncontent-length: 10485760\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let sent = within(
            &format!("POST {path} is answered"),
            read_until_closed(&mut s),
        )
        .await;
        let sent = String::from_utf8_lossy(&sent);
        assert!(sent.starts_with("HTTP/1.1 401"), "{path}: {sent}");
        // The connection closes after the answer, and the answer says so: a client that reused
        // it would send its next request into the close (the SDKs' "server disconnected").
        assert!(sent.contains("\r\nconnection: close\r\n"), "{path}: {sent}");
    }
    // A request without a body, or whose body was read (an authenticated POST refused for what
    // its body says), keeps its connection.
    let body = r#"{"name":1}"#;
    let admin = &server.admin_key;
    for (head, status) in [
        ("GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n".to_string(), "200"),
        (format!("POST /v1/configs HTTP/1.1\r\nhost: t\r\nx-portkey-api-key: {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()), "400"),
    ] {
        let mut s = TcpStream::connect(&at).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = within("a request is answered", s.read(&mut buf))
            .await
            .unwrap();
        let sent = String::from_utf8_lossy(&buf[..n]);
        assert!(sent.starts_with(&format!("HTTP/1.1 {status}")), "{sent}");
        assert!(!sent.contains("connection: close"), "{sent}");
    }
}

/// The `tollgate serve` binary with extra settings, started with an open-file soft limit of 256.
async fn spawn_bin(dir: &Path, env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_tollgate"));
    tollgate_env(&mut cmd, dir)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (child, url) = spawn_serving(&mut cmd).await;
    Served { child, url }
}

fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/{field}")).unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_raises_the_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let bin = spawn_bin(dir.path(), &[]).await;
    let limits = proc_status(bin.child.id(), "limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let (soft, hard) = (numbers[0], numbers[1]);
    let expected = hard.parse::<u64>().map_or(1 << 20, |h| h.min(1 << 20));
    assert!(
        expected > 256,
        "the hard limit ({hard}) must be above the 256 the test starts with, or nothing is shown"
    );
    assert_eq!(soft, expected.to_string(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_10_mib_posts_do_not_take_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bin = spawn_bin(dir.path(), &[]).await;
    let pid = bin.child.id();
    // Valid JSON, within max_body_bytes: read whole, it would pass the parser to authentication.
    let pad = " ".repeat((10 << 20) - 100);
    let body = bytes::Bytes::from(format!(
        r#"{{"model":"@up/gpt-4o-mini","messages":[],"pad":"{pad}"}}"#
    ));
    let client = reqwest::Client::new();
    let posts = (0..100).map(|i| {
        let req = client
            .post(format!("{}/v1/chat/completions", bin.url))
            .header(
                "x-portkey-api-key",
                format!("tg_wrong_key_{i:04}_000000000000000"),
            )
            .header("content-type", "application/json")
            .body(body.clone());
        async move { req.send().await.map(|r| r.status().as_u16()) }
    });
    let answers = within("100 posts", futures_util::future::join_all(posts)).await;
    for a in &answers {
        // Either the 401, or the connection closed under a client still sending its body.
        assert!(matches!(a, Ok(401) | Err(_)), "{a:?}");
    }
    let peak_mib = peak_rss_kib(pid) / 1024;
    eprintln!("peak memory after 100 unauthenticated 10 MiB posts: {peak_mib} MiB");
    assert!(
        peak_mib < 150,
        "the server's peak memory was {peak_mib} MiB"
    );
    let r = reqwest::get(format!("{}/readyz", bin.url)).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The usage event of `trace` in the store, if it is there yet.
fn stored_event(dir: &Path, trace: &str) -> Option<(String, i64)> {
    let db = rusqlite::Connection::open(dir.join("usage.sqlite")).ok()?;
    db.query_row(
        "SELECT usage_source, completion_tokens FROM usage_events WHERE trace_id = ?1",
        [trace],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_stops_reading_is_metered_and_shutdown_completes() {
    let mock = mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bin = spawn_bin(dir.path(), &[("TOLLGATE_CLIENT_STALL_TIMEOUT_MS", "500")]).await;
    let ws = harness::provision_up(&bin.url, &mock.url, "stall", "sk-stall-000111").await;
    let key = harness::completions_key(&bin.url, &ws, "k").await;
    let key = key["key"].as_str().unwrap();

    // A client with a small receive window asks for an 8 MiB stream and never reads it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket
        .connect(addr(&bin.url).parse().unwrap())
        .await
        .unwrap();
    let body = json!({"model": "@up/long-stream", "messages": [{"role": "user", "content": "hi"}],
        "stream": true, "stream_options": {"include_usage": true}})
    .to_string();
    let request = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-portkey-api-key: {key}\r\nx-portkey-trace-id: stalled\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    client.write_all(request.as_bytes()).await.unwrap();

    until("the stalled stream's usage is in the store", || async {
        stored_event(dir.path(), "stalled").is_some()
    })
    .await;
    assert_eq!(
        stored_event(dir.path(), "stalled"),
        Some(("provider".to_owned(), mock::COMPLETION_TOKENS as i64)),
        "metered as the provider billed it"
    );

    // The server closed the connection of the client that stopped reading.
    let url = bin.url.clone();
    until("the stalled connection is closed", || async {
        let text = metrics(&url).await;
        metric(
            &text,
            "tollgate_connections_timed_out_total{reason=\"client_stall\"}",
        ) == 1
    })
    .await;

    // SIGTERM completes although the client still holds its end open.
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(bin.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut exit = None;
    until("the server exits after SIGTERM", || {
        exit = exit.or_else(|| bin.child.try_wait().unwrap());
        std::future::ready(exit.is_some())
    })
    .await;
    assert!(exit.unwrap().success(), "{exit:?}");
    drop(client);
}

/// Streams read at once by [`slow_readers_of_big_events_hold_bounded_memory_and_are_metered`].
const SLOW_STREAMS: usize = 6;

/// Asks `url` for a `big-events` stream and reads it slowly: at most 32 KiB every 10 ms (about
/// 3 MB/s, far slower than the gateway can read from the mock), through a small receive window.
/// The pause paces the reader; it waits for nothing. Returns the last bytes of the response.
async fn read_slowly(url: &str, key: &str, trace: &str) -> Vec<u8> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 << 10).unwrap();
    let mut conn = socket.connect(addr(url).parse().unwrap()).await.unwrap();
    let body = json!({"model": "@up/big-events", "messages": [{"role": "user", "content": "hi"}],
        "stream": true})
    .to_string();
    let request = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nconnection: close\r\nx-portkey-api-key: {key}\r\nx-portkey-trace-id: {trace}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 32 << 10];
    let mut tail = Vec::new();
    loop {
        let n = conn.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return tail;
        }
        tail.extend_from_slice(&buf[..n]);
        let keep = tail.len().saturating_sub(256);
        tail.drain(..keep);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Review item 2: stream memory is bounded by bytes. Six clients read 29 MB streams of 900 KB
/// events slowly. Before: up to 64 events were held per stream (each up to 32 MiB, the whole-body
/// cap), so the binary's peak memory grew by about all the streams carried (166 MiB for 164 MiB
/// streamed; 123 MiB for 123 with 24 events a stream). Now: at most `CLIENT_BUFFER_BYTES` (4 MiB)
/// of events wait per stream and one event holds at most `max_stream_event_bytes` (1 MiB), so the
/// peak grows by under 10 MiB a stream (47 MiB here, under the 100 MiB bound); every stream is
/// still delivered whole and metered as the provider billed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_big_events_hold_bounded_memory_and_are_metered() {
    let mock = mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A slow reader holds the stream back a while in all; it is not a stalled one here.
    let bin = spawn_bin(
        dir.path(),
        &[("TOLLGATE_CLIENT_STALL_TIMEOUT_MS", "600000")],
    )
    .await;
    let ws = harness::provision_up(&bin.url, &mock.url, "slow", "sk-slow-000111").await;
    let key = harness::completions_key(&bin.url, &ws, "k").await;
    let key = key["key"].as_str().unwrap();
    let pid = bin.child.id();
    let warm = read_slowly(&bin.url, key, "warm-up");
    assert!(String::from_utf8_lossy(&within("warm-up", warm).await).contains("[DONE]"));
    let baseline = peak_rss_kib(pid);

    let traces: Vec<String> = (0..SLOW_STREAMS).map(|i| format!("slow-{i}")).collect();
    let readers = traces.iter().map(|t| read_slowly(&bin.url, key, t));
    let tails = within("slow readers", futures_util::future::join_all(readers)).await;
    for tail in &tails {
        let text = String::from_utf8_lossy(tail);
        assert!(
            text.contains("data: [DONE]"),
            "every stream ends whole: {text}"
        );
    }
    let grown_mib = (peak_rss_kib(pid) - baseline) / 1024;
    eprintln!("peak memory grew by {grown_mib} MiB over {SLOW_STREAMS} slow streams");
    let streamed_mib = (SLOW_STREAMS * mock::BIG_EVENTS * mock::BIG_EVENT_BYTES) >> 20;
    assert!(
        grown_mib < 100,
        "the server's peak memory grew by {grown_mib} MiB ({streamed_mib} MiB streamed)"
    );
    for t in &traces {
        until("the slow stream's usage is in the store", || async {
            stored_event(dir.path(), t).is_some()
        })
        .await;
        assert_eq!(
            stored_event(dir.path(), t),
            Some(("provider".to_owned(), mock::COMPLETION_TOKENS as i64)),
            "{t}: metered as the provider billed it"
        );
    }
}
