//! The embedded event log: one append-only file per topic in `<data dir>/log/`.
//!
//! # On-disk format
//! A topic file is a sequence of frames, each
//! `[u32 LE body length][u32 LE CRC-32 of body][body]`, where body is
//! `[u16 LE key length][key][payload]` and payload is an Avro single-object-encoded event.
//! A record's offset is the byte position of its frame.
//!
//! # Invariants
//! - Frames are only appended, by one writer thread per topic, in one `write` per batch.
//! - On open, the file is scanned and cut at the first frame that is short or fails its CRC
//!   (a torn write from a crash); everything before it is intact.
//! - Readers see only the committed end published after a batch is written, never a partial frame.
//!
//! # Durability (group commit)
//! With [`Fsync::Every`], an append resolves after its batch is written to the file with `write(2)`:
//! the bytes are then in the kernel and survive the process being killed (`kill -9`), and a sync
//! thread runs `fdatasync` at most `window` after a write, which bounds what a power loss (not a
//! process crash) can take to that window. With [`Fsync::Always`], an append resolves only after
//! an `fdatasync` that covers it (one sync covers every batch written while the previous ran).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{oneshot, watch};

use super::{EventLog, LogError, Offset, Record, Topic};

/// When the writer calls `fdatasync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Before acknowledging each batch.
    Always,
    /// At most this long after a write.
    Every(Duration),
}

const MAX_RECORD: usize = 8 << 20;
const MAX_BATCH: usize = 4096;
const HEADER: usize = 8;

type Ack = oneshot::Sender<Result<Offset, LogError>>;

struct Append {
    key: Vec<u8>,
    payload: Vec<u8>,
    ack: Ack,
}

struct TopicHandle {
    path: PathBuf,
    tx: mpsc::Sender<Append>,
    end: watch::Receiver<Offset>,
}

/// The embedded log. Cheap to share behind an `Arc`.
pub struct FileLog {
    config: TopicHandle,
    usage: TopicHandle,
    limits: TopicHandle,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileLog {
    /// Opens (creating if needed) the log under `dir`, recovering each topic file, and starts
    /// the writer threads. `usage_fsync` applies to the usage topic; config changes and limit
    /// events are always synced before they are acknowledged.
    pub fn open(dir: &Path, usage_fsync: Fsync) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(FileLog {
            config: open_topic(dir, Topic::Config, Fsync::Always)?,
            usage: open_topic(dir, Topic::Usage, usage_fsync)?,
            limits: open_topic(dir, Topic::Limits, Fsync::Always)?,
        })
    }

    fn topic(&self, t: Topic) -> &TopicHandle {
        match t {
            Topic::Config => &self.config,
            Topic::Usage => &self.usage,
            Topic::Limits => &self.limits,
        }
    }
}

fn open_topic(dir: &Path, topic: Topic, fsync: Fsync) -> Result<TopicHandle, LogError> {
    let path = dir.join(format!("{}.log", topic.name()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let end = recover(&mut file).map_err(io_err(&path))?;
    let (end_tx, end_rx) = watch::channel(end);
    let (tx, rx) = mpsc::channel();
    let name = topic.name();
    let writer_path = path.clone();
    std::thread::Builder::new()
        .name(format!("log-{name}"))
        .spawn(move || writer(file, writer_path, end, fsync, rx, end_tx))
        .map_err(io_err(&path))?;
    Ok(TopicHandle {
        path,
        tx,
        end: end_rx,
    })
}

/// Scans the file frame by frame, truncates a torn tail, and returns the end offset.
fn recover(file: &mut File) -> std::io::Result<Offset> {
    let total = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &*file);
    let (mut pos, mut head, mut body) = (0u64, [0u8; HEADER], Vec::new());
    while reader.read_exact(&mut head).is_ok() {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(2..=MAX_RECORD + 2 + usize::from(u16::MAX)).contains(&len) {
            break;
        }
        body.resize(len, 0);
        if reader.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            break;
        }
        pos += (HEADER + len) as u64;
    }
    drop(reader);
    if pos < total {
        tracing::warn!(
            kept = pos,
            dropped = total - pos,
            "log: truncating a torn tail"
        );
        file.set_len(pos)?;
        file.sync_data()?;
    }
    file.seek(SeekFrom::Start(pos))?;
    Ok(pos)
}

/// The body of the frame at `pos` and the position after it, if the frame is whole and intact.
fn frame_at(data: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let head = data.get(pos..pos + HEADER)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let body = data.get(pos + HEADER..pos + HEADER + len)?;
    (crc32fast::hash(body) == crc && len >= 2).then_some((body, pos + HEADER + len))
}

fn encode_frame(out: &mut Vec<u8>, key: &[u8], payload: &[u8]) {
    let len = 2 + key.len() + payload.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What the writer hands the sync thread: with [`Fsync::Always`], acks to send after the sync.
type SyncJob = Vec<(Ack, Offset)>;

/// The writer thread: batches whatever is queued into one `write`, then acks (or, with
/// [`Fsync::Always`], hands the acks to the sync thread). It never waits for a sync itself, so a
/// slow `fdatasync` (a busy disk) does not hold up appends behind it.
fn writer(
    mut file: File,
    path: PathBuf,
    mut end: Offset,
    fsync: Fsync,
    rx: mpsc::Receiver<Append>,
    end_tx: watch::Sender<Offset>,
) {
    let (sync_tx, sync_rx) = mpsc::channel::<SyncJob>();
    let sync_file = match file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "log: cannot start the sync thread");
            return;
        }
    };
    let sync_path = path.clone();
    let syncer = std::thread::Builder::new()
        .name("log-sync".into())
        .spawn(move || sync_loop(sync_file, sync_path, fsync, sync_rx));
    if syncer.is_err() {
        tracing::error!(path = %path.display(), "log: cannot start the sync thread");
        return;
    }
    let mut buf = Vec::with_capacity(64 << 10);
    let mut acks: Vec<(Ack, Offset)> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        buf.clear();
        let mut pos = end;
        for a in std::iter::once(first).chain(rx.try_iter().take(MAX_BATCH - 1)) {
            let before = buf.len();
            encode_frame(&mut buf, &a.key, &a.payload);
            acks.push((a.ack, pos));
            pos += (buf.len() - before) as u64;
        }
        match file.write_all(&buf) {
            Ok(()) => {
                end = pos;
                end_tx.send_replace(end);
                let batch: SyncJob = std::mem::take(&mut acks);
                let batch = match fsync {
                    Fsync::Always => batch,
                    Fsync::Every(_) => {
                        for (ack, offset) in batch {
                            let _ = ack.send(Ok(offset));
                        }
                        Vec::new()
                    }
                };
                // The sync thread is gone only if it panicked; then acks are dropped (the
                // appenders see an error) rather than sent without a sync.
                let _ = sync_tx.send(batch);
            }
            Err(e) => {
                // Nothing of this batch is acknowledged; cut any partial write so the file stays
                // a clean sequence of frames.
                tracing::error!(path = %path.display(), error = %e, "log: append failed");
                let _ = file
                    .set_len(end)
                    .and_then(|_| file.seek(SeekFrom::Start(end)).map(drop));
                for (ack, _) in acks.drain(..) {
                    let _ = ack.send(Err(LogError::Io {
                        path: path.display().to_string(),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    }));
                }
            }
        }
    }
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
                    Err(e) => Err(LogError::Io {
                        path: path.display().to_string(),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    }),
                });
            }
        }
    }
}

fn read_range(
    path: &Path,
    from: Offset,
    end: Offset,
    max_bytes: usize,
) -> Result<Vec<Record>, LogError> {
    if from >= end {
        return Ok(Vec::new());
    }
    let len = (end - from).min(max_bytes.max(MAX_RECORD + HEADER) as u64) as usize;
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut data = vec![0u8; len];
    file.read_exact(&mut data).map_err(io_err(path))?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some((body, next)) = frame_at(&data, pos) {
        let key_len = u16::from_le_bytes([body[0], body[1]]) as usize;
        let (key, payload) = body[2..].split_at(key_len.min(body.len() - 2));
        out.push(Record {
            offset: from + pos as u64,
            next: from + next as u64,
            key: key.to_vec(),
            payload: payload.to_vec(),
        });
        pos = next;
        if pos >= max_bytes {
            break;
        }
    }
    if out.is_empty() {
        return Err(LogError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no valid frame at offset {from}"),
            ),
        });
    }
    Ok(out)
}

impl EventLog for FileLog {
    fn append(
        &self,
        topic: Topic,
        key: Vec<u8>,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Offset, LogError>> {
        let size = key.len() + payload.len();
        if size > MAX_RECORD || key.len() > usize::from(u16::MAX) {
            return async move { Err(LogError::TooLarge(size)) }.boxed();
        }
        let (ack, done) = oneshot::channel();
        let sent = self.topic(topic).tx.send(Append { key, payload, ack });
        async move {
            sent.map_err(|_| LogError::WriterGone(topic.name()))?;
            done.await.map_err(|_| LogError::WriterGone(topic.name()))?
        }
        .boxed()
    }

    fn read(
        &self,
        topic: Topic,
        from: Offset,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<Vec<Record>, LogError>> {
        let t = self.topic(topic);
        let (path, end) = (t.path.clone(), *t.end.borrow());
        async move {
            tokio::task::spawn_blocking(move || read_range(&path, from, end, max_bytes))
                .await
                .map_err(|_| LogError::WriterGone(topic.name()))?
        }
        .boxed()
    }

    fn watch_end(&self, topic: Topic) -> watch::Receiver<Offset> {
        self.topic(topic).end.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(log: &FileLog, topic: Topic) -> Vec<Record> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let batch = log.read(topic, at, 1 << 20).await.unwrap();
            let Some(last) = batch.last() else { return out };
            at = last.next;
            out.extend(batch);
        }
    }

    #[tokio::test]
    async fn append_read_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = FileLog::open(dir.path(), Fsync::Every(Duration::from_millis(5))).unwrap();
            let mut joins = Vec::new();
            for i in 0..200u32 {
                joins.push(log.append(Topic::Usage, b"k".to_vec(), i.to_le_bytes().to_vec()));
            }
            let offsets: Vec<Offset> = futures_util::future::try_join_all(joins).await.unwrap();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            log.append(Topic::Config, b"c".to_vec(), b"x".to_vec())
                .await
                .unwrap();
        }
        let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
        let recs = read_all(&log, Topic::Usage).await;
        assert_eq!(recs.len(), 200);
        assert!(recs
            .iter()
            .enumerate()
            .all(|(i, r)| r.payload == (i as u32).to_le_bytes()));
        assert_eq!(read_all(&log, Topic::Config).await.len(), 1);
        assert_eq!(
            *log.watch_end(Topic::Usage).borrow(),
            recs.last().unwrap().next
        );
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.log");
        {
            let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
            for i in 0..3u8 {
                log.append(Topic::Usage, vec![], vec![i; 10]).await.unwrap();
            }
        }
        let whole = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        log.append(Topic::Usage, vec![], vec![7; 10]).await.unwrap();
        let recs = read_all(&log, Topic::Usage).await;
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[3].payload, vec![7; 10]);
    }

    #[tokio::test]
    async fn corrupt_middle_frame_stops_recovery_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.log");
        {
            let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
            for i in 0..3u8 {
                log.append(Topic::Usage, vec![], vec![i; 10]).await.unwrap();
            }
        }
        let mut data = std::fs::read(&path).unwrap();
        let frame = data.len() / 3;
        data[frame + HEADER + 4] ^= 0xFF;
        std::fs::write(&path, &data).unwrap();
        let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
        assert_eq!(read_all(&log, Topic::Usage).await.len(), 1);
    }

    #[tokio::test]
    async fn oversized_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
        let r = log
            .append(Topic::Usage, vec![], vec![0; MAX_RECORD + 1])
            .await;
        assert!(matches!(r, Err(LogError::TooLarge(_))));
    }
}
