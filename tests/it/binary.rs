//! The `tollgate` binary as a process in these tests: spawning it ready to serve, killing it when
//! done, reading its peak memory, and tearing the tail off one of its files as a crash would.

use std::path::Path;
use std::process::{Child, Command};

use crate::harness::{await_ready, free_port, ADMIN_KEY};

/// Sets what every `tollgate` process these tests spawn gets: its data in `data`, the test admin
/// key, warn-level logging.
pub fn tollgate_env<'c>(cmd: &'c mut Command, data: &Path) -> &'c mut Command {
    cmd.env("TOLLGATE_DATA_DIR", data)
        .env("TOLLGATE_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "warn")
}

/// Spawns `cmd` (a `tollgate serve`) listening on a free loopback port and waits (up to
/// [`crate::harness::PATIENCE`]) until it is ready; returns the process and its URL.
pub async fn spawn_serving(cmd: &mut Command) -> (Child, String) {
    let port = free_port();
    let mut child = cmd
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    await_ready(&mut child, &url, "tollgate serve").await;
    (child, url)
}

/// A spawned `tollgate` process ([`spawn_serving`]) killed when dropped.
pub struct Served {
    pub child: Child,
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peak resident memory (VmHWM) of the process `pid`, in KiB, from `/proc/<pid>/status`.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Cuts the last `bytes` bytes off the file at `path`, as a crash mid-write leaves a log.
pub fn cut_tail(path: &Path, bytes: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len - bytes)
        .unwrap();
}
