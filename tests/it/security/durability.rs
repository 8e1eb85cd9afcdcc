//! See [`super`]: the durability area of the security suite. Nothing served goes unmetered and
//! nothing acknowledged is lost: analytics read their own writes, a full disk refuses before the
//! provider is called and recovers by itself, an admin command commits whole or not at all, a
//! damaged log stops startup (torn tails are cut), and the data dir is private.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::{spawn_serving, tollgate_env, Served};
use crate::harness::{self, admin_call as admin, call, free_port, ADMIN_KEY};
use crate::mock;

fn command(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    tollgate_env(&mut c, data).env_remove("TOLLGATE_MASTER_KEY");
    c
}

fn stderr_path(data: &Path) -> PathBuf {
    data.with_extension("stderr")
}

/// The `tollgate` binary serving `data` (stderr kept in `<data>.stderr` for the assertions).
async fn spawn(data: &Path) -> Served {
    let err = std::fs::File::create(stderr_path(data)).unwrap();
    let mut cmd = command(data);
    cmd.arg("serve")
        .stdout(err.try_clone().unwrap())
        .stderr(err);
    let (child, url) = spawn_serving(&mut cmd).await;
    Served { child, url }
}

fn stop(mut p: Served) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(p.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(p.child.wait().unwrap().success(), "SIGTERM exits cleanly");
}

/// Starts `tollgate serve` on `data` expecting it to refuse (exit within 20 s); returns its output.
fn start_fails(data: &Path) -> String {
    let out = std::fs::File::create(stderr_path(data)).unwrap();
    let mut child = command(data)
        .arg("serve")
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..800 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let text = std::fs::read_to_string(stderr_path(data)).unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server started: {text}");
    };
    assert!(!status.success(), "{text}");
    text
}

/// Runs `tollgate log <action>` on `data`: (success, stdout).
fn log_tool(data: &Path, action: &str) -> (bool, String) {
    let out = command(data).args(["log", action]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A tenant on the binary: a workspace, integration `@up` at `upstream`, a service key.
async fn tenant(url: &str, upstream: &str) -> (String, String) {
    let ws = harness::provision_up(url, upstream, "durable", "sk-durable-provider-000111").await;
    let key = harness::completions_key(url, &ws, "k").await;
    (ws, key["key"].as_str().unwrap().to_owned())
}

async fn chat(url: &str, key: &str, trace: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-portkey-api-key", key)
        .header("x-portkey-trace-id", trace)
        .json(&json!({"model": "@up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

async fn readyz(url: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The trace ids in the usage store of `data`.
fn stored_traces(data: &Path) -> HashSet<String> {
    let db = rusqlite::Connection::open(data.join("usage.sqlite")).unwrap();
    let mut stmt = db.prepare("SELECT trace_id FROM usage_events").unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// Waits (bounded) until every trace of `acked` is in the store of `data`.
async fn await_stored(data: &Path, acked: &HashSet<String>) {
    let mut stored = HashSet::new();
    for _ in 0..400 {
        stored = stored_traces(data);
        if acked.is_subset(&stored) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let missing: Vec<_> = acked.difference(&stored).collect();
    panic!("acknowledged requests missing from the store: {missing:?}");
}

const ALL_TIME: &str =
    "time_of_generation_min=2020-01-01T00:00:00Z&time_of_generation_max=2100-01-01T00:00:00Z";

/// Two threads spinning until dropped: both cores busy, as on a loaded machine.
struct Busy(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

fn busy_cores() -> Busy {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    Busy(stop, threads)
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// Read-your-writes: N requests, then at once `graphs/requests` counts all N (before: the store
/// sink's 250 ms batching window left the last requests out), with both cores busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_show_every_request_answered_before_the_query() {
    let mock = mock::start().await;
    let server = harness::start().await;
    let (_, key) = server.tenant(&mock.url, "up").await;
    let _busy = busy_cores();
    for round in 1..=3u64 {
        for i in 0..10 {
            let (s, _, body) = chat(&server.url, &key, &format!("ryw-{round}-{i}")).await;
            assert_eq!(s, 200, "{body}");
        }
        let url = format!("{}/v1/analytics/graphs/requests?{ALL_TIME}", server.url);
        let (s, _, v) = harness::admin_get(&url).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["summary"]["total"], json!(round * 10), "{v}");
    }
}

/// An undecodable usage record stops the store sink where it is (nothing after it is skipped)
/// and makes the process not ready, with the reason (before: skipped with a log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_usage_record_is_a_visible_error_not_a_skip() {
    use tollgate::log::Topic;
    let server = harness::start().await;
    assert_eq!(readyz(&server.url).await.0, 200);
    server
        .log()
        .append(Topic::Usage, b"k".to_vec(), b"not an event".to_vec())
        .await
        .unwrap();
    let mut last = (0, Value::Null);
    for _ in 0..200 {
        last = readyz(&server.url).await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(
        last.1["reasons"].to_string().contains("does not decode"),
        "{}",
        last.1
    );
    assert!(server.store_lag().await > 0, "the record is not skipped");
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("tollgate_store_sink_errors_total 0"),
        "{metrics}"
    );
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir)),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}); the disk-full test needs it",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); the disk-full test needs it");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let small = [0x5au8; 512];
    while f.write(&small).is_ok_and(|n| n > 0) {}
}

/// Item 12. With the data dir's disk full, requests are refused with 503 `metering_unavailable`
/// before the provider is called, `/readyz` says why, and when space returns the gateway serves
/// again by itself with every acknowledged request in the store (before: the provider was
/// called, the answer was 500, nothing was metered, and readyz said ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_before_the_provider_and_recovers() {
    let Some(fs) = Tmpfs::mount("20m") else {
        return;
    };
    let mock = mock::start().await;
    let data = fs.path().join("data");
    let p = spawn(&data).await;
    let (_, key) = tenant(&p.url, &mock.url).await;
    let mut acked = HashSet::new();
    for i in 0..5 {
        let trace = format!("before-{i}");
        assert_eq!(chat(&p.url, &key, &trace).await.0, 200);
        acked.insert(trace);
    }
    fill(&fs.path().join("filler"));
    // Requests admitted while the log still has its preallocated headroom are metered into it;
    // the first refusal comes as soon as the headroom cannot be topped up.
    let mut refused = None;
    for i in 0..50 {
        let trace = format!("full-{i}");
        let (s, headers, body) = chat(&p.url, &key, &trace).await;
        match s {
            200 => {
                acked.insert(trace);
            }
            503 => {
                refused = Some((headers, body));
                break;
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    let (headers, body) = refused.expect("a full disk is refused within 50 requests");
    assert_eq!(body["error"]["code"], "metering_unavailable", "{body}");
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(headers["x-portkey-gateway-exception"], "true");
    let calls = mock.seen.requests.load(Ordering::SeqCst);
    for i in 0..5 {
        assert_eq!(chat(&p.url, &key, &format!("refused-{i}")).await.0, 503);
    }
    assert_eq!(
        mock.seen.requests.load(Ordering::SeqCst),
        calls,
        "the provider is not called while usage cannot be metered"
    );
    let (status, ready) = readyz(&p.url).await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready["reasons"].to_string().contains("headroom"), "{ready}");

    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let mut back = false;
    for _ in 0..400 {
        if readyz(&p.url).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        back,
        "ready again once space returns: {}",
        readyz(&p.url).await.1
    );
    assert_eq!(chat(&p.url, &key, "after").await.0, 200);
    acked.insert("after".into());
    await_stored(&data, &acked).await;
    stop(p);
}

/// `n` data-plane keys `k0`, `k1`, … in the workspace `ws` of the server at `url`.
async fn add_keys(url: &str, ws: &str, n: usize) {
    for i in 0..n {
        harness::completions_key(url, ws, &format!("k{i}")).await;
    }
}

/// A force-delete of the workspace at `url` (its whole admin URL); returns status and JSON.
async fn force_delete(url: &str) -> (u16, Value) {
    let (s, _, body) = call(
        "DELETE",
        url,
        Some(ADMIN_KEY),
        Some(json!({"force_delete": true})),
    )
    .await;
    (s, body)
}

/// Keys of workspace `ws` in the organisation's key list.
async fn key_count(url: &str, ws: &str) -> usize {
    let v = admin(url, "GET", "/api-keys?page_size=1000", None).await;
    let keys = v["data"].as_array().unwrap();
    keys.iter().filter(|k| k["workspace_id"] == ws).count()
}

/// Item 14. A force-delete of a workspace with 60 keys on a nearly full disk fails whole: the
/// answer says the change was not made and all 60 keys (and the workspace) remain, also after a
/// restart; with space back it deletes all of them (before: it answered "not made" with 11 of 60
/// keys deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_delete_on_a_nearly_full_disk_is_all_or_nothing() {
    let Some(fs) = Tmpfs::mount("20m") else {
        return;
    };
    let data = fs.path().join("data");
    let p = spawn(&data).await;
    let ws = harness::create_workspace(&p.url, "doomed").await;
    add_keys(&p.url, &ws, 60).await;
    // Leave one page free: some of the 61 deletions would fit, not all.
    std::fs::write(fs.path().join("gap"), [0u8; 4096]).unwrap();
    fill(&fs.path().join("filler"));
    std::fs::remove_file(fs.path().join("gap")).unwrap();
    let path = format!("/v1/admin/workspaces/{ws}");
    let url = format!("{}{path}", p.url);
    let (s, body) = force_delete(&url).await;
    assert_eq!(s, 500, "{body}");
    assert!(body.to_string().contains("not made"), "{body}");
    assert_eq!(key_count(&p.url, &ws).await, 60, "none deleted");
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    stop(p);
    let p = spawn(&data).await;
    let url = format!("{}{path}", p.url);
    assert_eq!(
        key_count(&p.url, &ws).await,
        60,
        "none deleted after a restart either"
    );
    let (s, _, body) = call(
        "DELETE",
        &url,
        Some(ADMIN_KEY),
        Some(json!({"force_delete": true})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    stop(p);
    let p = spawn(&data).await;
    let url = format!("{}{path}", p.url);
    assert_eq!(key_count(&p.url, &ws).await, 0, "all deleted");
    let (s, _, _) = harness::admin_get(&url).await;
    assert_eq!(s, 404);
    stop(p);
}

/// The frame of a log file that contains byte `at`: its start.
fn frame_containing(bytes: &[u8], at: usize) -> usize {
    let mut pos = 0;
    loop {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if at < pos + 8 + len {
            return pos;
        }
        pos += 8 + len;
    }
}

/// A data dir with a tenant and `n` metered requests, the server stopped.
async fn served(n: usize) -> (tempfile::TempDir, PathBuf) {
    let mock = mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = spawn(&data).await;
    let (_, key) = tenant(&p.url, &mock.url).await;
    let mut acked = HashSet::new();
    for i in 0..n {
        let trace = format!("r{i}");
        assert_eq!(chat(&p.url, &key, &trace).await.0, 200);
        acked.insert(trace);
    }
    await_stored(&data, &acked).await;
    stop(p);
    (dir, data)
}

/// Item 15. One flipped byte at 10% of the usage log: startup fails naming the file and the
/// frame's offset, `log verify` reports it, `log salvage` keeps every other event and the server
/// starts (before: 90% of the log was cut away with one warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_usage_log_stops_startup_until_salvaged() {
    let (_dir, data) = served(40).await;
    let path = data.join("log/usage.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 10;
    let frame = frame_containing(&bytes, at);
    bytes[frame + 30] ^= 0x01; // inside the body: the frame's CRC fails
    std::fs::write(&path, &bytes).unwrap();

    let err = start_fails(&data);
    assert!(
        err.contains("usage.log") && err.contains(&format!("byte {frame}")),
        "{err}"
    );
    assert!(err.contains("tollgate log salvage"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
    let (ok, report) = log_tool(&data, "verify");
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("DAMAGED at byte {frame}")),
        "{report}"
    );

    let (ok, report) = log_tool(&data, "salvage");
    assert!(ok, "{report}");
    assert!(report.contains("kept 39 records"), "{report}");
    assert!(std::fs::read_dir(data.join("log")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("damaged")));
    assert!(log_tool(&data, "verify").0);
    let p = spawn(&data).await;
    assert_eq!(readyz(&p.url).await.0, 200);
    stop(p);
    assert_eq!(
        stored_traces(&data).len(),
        40,
        "the store keeps what it had"
    );
}

/// Item 15. A 5-byte cut of the config log's tail, whose last command was a force-delete of a
/// workspace with its keys: the torn batch is dropped whole and nothing else (before: only its
/// last event, the workspace's deletion, was dropped, leaving the keys deleted but not it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_config_log_drops_only_the_torn_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = spawn(&data).await;
    let ws = harness::create_workspace(&p.url, "cut").await;
    add_keys(&p.url, &ws, 3).await;
    let path = format!("/v1/admin/workspaces/{ws}");
    let url = format!("{}{path}", p.url);
    let (s, body) = force_delete(&url).await;
    assert_eq!(s, 200, "{body}");
    stop(p);
    let log = data.join("log/config.log");
    crate::binary::cut_tail(&log, 5);

    let p = spawn(&data).await;
    let url = format!("{}{path}", p.url);
    let (s, _, _) = harness::admin_get(&url).await;
    assert_eq!(
        s, 200,
        "the workspace is back with the whole command undone"
    );
    assert_eq!(
        key_count(&p.url, &ws).await,
        3,
        "and so are all of its keys"
    );
    let err = std::fs::read_to_string(stderr_path(&data)).unwrap();
    assert!(err.contains("torn tail"), "the cut is reported: {err}");
    stop(p);
}

/// Item 15. A usage store ahead of its log (the log restored from an older copy) stops startup
/// with a clear error; salvage moves the store's position back and the server starts (before: it
/// started with readyz lag 0 and silently skipped the next events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ahead_of_its_log_is_a_clear_error() {
    let (_dir, data) = served(5).await;
    let path = data.join("log/usage.log");
    let bytes = std::fs::read(&path).unwrap();
    // Keep only the first event, as a copy of the log taken before the others were appended.
    let keep = 8 + u64::from(u32::from_le_bytes(bytes[0..4].try_into().unwrap()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(keep)
        .unwrap();
    let err = start_fails(&data);
    assert!(
        err.contains("usage.sqlite") && err.contains(&format!("log ends at byte {keep}")),
        "{err}"
    );
    let (ok, report) = log_tool(&data, "verify");
    assert!(!ok, "{report}");
    let (ok, report) = log_tool(&data, "salvage");
    assert!(ok && report.contains("moved back"), "{report}");
    let p = spawn(&data).await;
    assert_eq!(readyz(&p.url).await.0, 200);
    stop(p);
}

/// Item 22. The data dir and everything in it are private: 0700 directories, 0600 files
/// (before: 0755 and 0644, with hashed keys, sealed credentials and metadata inside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let (_dir, data) = served(3).await;
    let dirs = [data.clone(), data.join("log")];
    let mut files = vec![data.join("master.key"), data.join("usage.sqlite")];
    for t in ["config", "usage", "limits"] {
        files.push(data.join(format!("log/{t}.log")));
    }
    let check = |files: &[PathBuf]| {
        for d in &dirs {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        for f in files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
    };
    let p = spawn(&data).await;
    let mut serving = files.clone();
    for ext in ["sqlite-wal", "sqlite-shm"] {
        let f = data.join("usage").with_extension(ext);
        assert!(f.exists(), "{} exists while serving", f.display());
        serving.push(f);
    }
    check(&serving);
    stop(p);
    // A data dir an older version left world-readable is narrowed at start.
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    for d in &dirs {
        set(d, 0o755);
    }
    for f in &files {
        set(f, 0o644);
    }
    let p = spawn(&data).await;
    check(&files);
    stop(p);
}
