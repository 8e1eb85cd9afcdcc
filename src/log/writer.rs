//! The writer of one topic file of the embedded log ([`super::file`]): group commit, batches
//! written as one unit, a failed write cut back, the usage headroom kept, and the sync thread.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::file::HEADROOM_RETRY;
use super::frame::{self, MAX_BATCH};
use super::{LogError, Offset};
use crate::settings::Fsync;

pub(super) type Ack = oneshot::Sender<Result<Offset, LogError>>;

/// Records to write as one unit, and who to tell.
pub(super) struct Append {
    pub(super) records: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) ack: Ack,
}

/// Whether a topic can take writes, shared by its writer and the log.
#[derive(Default)]
pub(super) struct Health {
    /// The usage headroom could not be kept (the disk is full).
    pub(super) no_headroom: AtomicBool,
    /// A failed write could not be cut back: every append is refused until a restart.
    pub(super) poisoned: AtomicBool,
    /// Why the topic cannot take writes, for readiness.
    pub(super) reason: Mutex<Option<String>>,
}

/// What the writer hands the sync thread: with [`Fsync::Always`], acks to send after the sync.
type SyncJob = Vec<(Ack, Offset)>;

/// A topic's writer thread state.
pub(super) struct Writer {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) end: Offset,
    pub(super) fsync: Fsync,
    /// Bytes to keep allocated past `end` (0: none).
    pub(super) headroom: u64,
    /// How far the file is allocated.
    pub(super) reserved: Offset,
    pub(super) health: Arc<Health>,
}

/// The log's error for a failed write, for each append it fails: `io::Error` is not `Clone`,
/// so each gets a copy (kind and message).
fn io_copy(path: &Path, e: &std::io::Error) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(e.kind(), e.to_string()),
    }
}

impl Writer {
    /// Batches whatever is queued into one `write`, then acks (or, with [`Fsync::Always`], hands
    /// the acks to the sync thread). It never waits for a sync itself, so a slow `fdatasync` (a
    /// busy disk) does not hold up appends behind it.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Append>, end_tx: watch::Sender<Offset>) {
        let Some(sync_tx) = self.start_syncer() else {
            return;
        };
        self.keep_headroom();
        let mut buf = Vec::with_capacity(64 << 10);
        let mut acks: Vec<(Ack, Offset)> = Vec::with_capacity(MAX_BATCH);
        let mut poisoned: Option<std::io::Error> = None;
        while let Some(first) = self.next_append(&rx) {
            let group = std::iter::once(first).chain(rx.try_iter().take(MAX_BATCH - 1));
            if let Some(e) = &poisoned {
                for a in group {
                    let _ = a.ack.send(Err(io_copy(&self.path, e)));
                }
                continue;
            }
            self.encode(group, &mut buf, &mut acks);
            match self.file.write_all(&buf) {
                Ok(()) => self.written(buf.len(), &end_tx, &sync_tx, std::mem::take(&mut acks)),
                Err(e) => poisoned = self.failed(&e, &mut acks),
            }
        }
    }

    /// The next append; None once the log is gone. While the headroom cannot be kept, it is
    /// tried again every [`HEADROOM_RETRY`] meanwhile.
    fn next_append(&mut self, rx: &mpsc::Receiver<Append>) -> Option<Append> {
        loop {
            if !self.health.no_headroom.load(Ordering::Acquire) {
                return rx.recv().ok();
            }
            match rx.recv_timeout(HEADROOM_RETRY) {
                Ok(a) => return Some(a),
                Err(RecvTimeoutError::Timeout) => self.keep_headroom(),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Frames a group of appends into `buf` (a batch behind its marker), and each append's ack
    /// with the offset of its last record into `acks`.
    fn encode(
        &self,
        group: impl Iterator<Item = Append>,
        buf: &mut Vec<u8>,
        acks: &mut Vec<(Ack, Offset)>,
    ) {
        buf.clear();
        for a in group {
            if a.records.len() > 1 {
                frame::encode_marker(buf, a.records.len() as u32);
            }
            let mut last = self.end;
            for (key, payload) in &a.records {
                last = self.end + buf.len() as u64;
                frame::encode_record(buf, key, payload);
            }
            acks.push((a.ack, last));
        }
    }

    /// A group of `len` bytes is in the file: publishes the end, acks now or after the sync.
    fn written(
        &mut self,
        len: usize,
        end_tx: &watch::Sender<Offset>,
        sync_tx: &mpsc::Sender<SyncJob>,
        batch: SyncJob,
    ) {
        self.end += len as u64;
        end_tx.send_replace(self.end);
        let batch = match self.fsync {
            Fsync::Always => batch,
            Fsync::Every(_) => {
                for (ack, offset) in batch {
                    let _ = ack.send(Ok(offset));
                }
                Vec::new()
            }
        };
        // The sync thread is gone only if it panicked; then acks are dropped (the appenders see
        // an error) rather than sent without a sync.
        let _ = sync_tx.send(batch);
        self.keep_headroom();
    }

    /// A group's write failed: nothing of it is acknowledged; any partial write is cut so the
    /// file stays a clean sequence of frames (and batches). When even that fails, returns the
    /// error that refuses every later append.
    fn failed(
        &mut self,
        e: &std::io::Error,
        acks: &mut Vec<(Ack, Offset)>,
    ) -> Option<std::io::Error> {
        tracing::error!(path = %self.path.display(), error = %e, "log: append failed");
        for (ack, _) in acks.drain(..) {
            let _ = ack.send(Err(io_copy(&self.path, e)));
        }
        let cut = self.cut_back().err()?;
        tracing::error!(path = %self.path.display(), error = %cut,
            "log: a failed append could not be cut back; refusing appends until restart");
        *self.health.reason.lock() = Some(format!(
            "{}: a failed append could not be cut back ({cut}); restart to recover the file",
            self.path.display()
        ));
        self.health.poisoned.store(true, Ordering::Release);
        Some(cut)
    }

    fn cut_back(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.end)?;
        self.file.seek(SeekFrom::Start(self.end))?;
        self.reserved = self.end;
        self.keep_headroom();
        Ok(())
    }

    fn start_syncer(&self) -> Option<mpsc::Sender<SyncJob>> {
        let (sync_tx, sync_rx) = mpsc::channel::<SyncJob>();
        let started = self.file.try_clone().and_then(|sync_file| {
            let (path, fsync) = (self.path.clone(), self.fsync);
            std::thread::Builder::new()
                .name("log-sync".into())
                .spawn(move || sync_loop(sync_file, path, fsync, sync_rx))
        });
        match started {
            Ok(_) => Some(sync_tx),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "log: cannot start the sync thread");
                None
            }
        }
    }

    /// Tops the allocation up to `end + headroom`; records whether it could.
    fn keep_headroom(&mut self) {
        if self.headroom == 0
            || self.reserved >= self.end + self.headroom
            || self.health.poisoned.load(Ordering::Acquire)
        {
            return;
        }
        match allocate(&self.file, self.end, self.headroom) {
            Ok(()) => {
                self.reserved = self.end + self.headroom;
                if self.health.no_headroom.swap(false, Ordering::AcqRel) {
                    tracing::info!(path = %self.path.display(), "log: disk space is back; usage is accepted again");
                    *self.health.reason.lock() = None;
                }
            }
            Err(e) => {
                if !self.health.no_headroom.swap(true, Ordering::AcqRel) {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "log: cannot keep headroom for usage events (disk full?); refusing requests until space returns");
                }
                *self.health.reason.lock() = Some(format!(
                    "the usage log {} cannot keep {} bytes of headroom: {e}",
                    self.path.display(),
                    self.headroom
                ));
            }
        }
    }
}

/// Allocates `len` bytes of `file` from `at` without changing its size. Filesystems that cannot
/// preallocate are treated as always having room (the append itself still reports a failure).
#[cfg_attr(
    target_os = "linux",
    expect(
        unsafe_code,
        reason = "fallocate (reserving the disk space a batch needs before writing it) has no safe API"
    )
)]
fn allocate(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file`.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off, len) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(());
            }
            return Err(e);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
    Ok(())
}

/// Syncs written data: at once for [`Fsync::Always`] (one sync covers every batch queued so far,
/// then their acks go out), or once per window after the first unsynced write.
fn sync_loop(file: File, path: PathBuf, fsync: Fsync, rx: mpsc::Receiver<SyncJob>) {
    let window = match fsync {
        Fsync::Always => Duration::ZERO,
        Fsync::Every(w) => w,
    };
    let mut dirty_since: Option<Instant> = None;
    let mut pending: Vec<(Ack, Offset)> = Vec::new();
    loop {
        let job = match dirty_since {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout(window.saturating_sub(t.elapsed())),
        };
        match job {
            Ok(acks) => {
                pending.extend(acks);
                pending.extend(rx.try_iter().flatten());
                dirty_since.get_or_insert_with(Instant::now);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = file.sync_data();
                return;
            }
        }
        if dirty_since.is_some_and(|t| t.elapsed() >= window) {
            dirty_since = None;
            let result = file.sync_data();
            if let Err(e) = &result {
                tracing::error!(path = %path.display(), error = %e, "log: fdatasync failed");
            }
            for (ack, offset) in pending.drain(..) {
                let _ = ack.send(match &result {
                    Ok(()) => Ok(offset),
                    Err(e) => Err(io_copy(&path, e)),
                });
            }
        }
    }
}
