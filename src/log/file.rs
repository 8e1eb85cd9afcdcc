//! The embedded event log: one append-only file per topic in `<data dir>/log/`, in the format of
//! [`super::frame`] (frames with CRCs; a batch of records written as one unit behind a marker).
//!
//! # Invariants
//! - Frames are only appended, by one writer thread per topic, in one `write` per group of
//!   appends. A failed write is cut back to the last whole group; if even that fails, the topic
//!   refuses every later append (its file is then recovered at the next start).
//! - On open, the file is scanned ([`super::frame::scan`]): a torn tail (an unfinished write) is
//!   cut; corruption with intact frames after it stops the open with [`LogError::Corrupt`].
//! - Readers see only the committed end published after a group is written, never a partial
//!   frame or batch.
//!
//! # Headroom (usage topic)
//! The writer keeps [`USAGE_HEADROOM`] bytes allocated past the usage file's end
//! (`fallocate(FALLOC_FL_KEEP_SIZE)`: the file's size, so its format, is unchanged), so appends of
//! requests already admitted land in allocated space and cannot fail with a full disk. When the
//! headroom cannot be kept, [`EventLog::accepts_usage`] says no (gateways answer 503 before calling
//! a provider) and the writer retries every [`HEADROOM_RETRY`] until space returns.
//!
//! # Durability (group commit)
//! With [`Fsync::Every`], an append resolves after its group is written to the file with `write(2)`:
//! the bytes are then in the kernel and survive the process being killed (`kill -9`), and a sync
//! thread runs `fdatasync` at most `window` after a write, which bounds what a power loss (not a
//! process crash) can take to that window. With [`Fsync::Always`], an append resolves only after
//! an `fdatasync` that covers it (one sync covers every group written while the previous ran).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{oneshot, watch};

use super::frame::{self, Damage, Frame, HEADER, MAX_BATCH, MAX_BODY, MAX_KEY, MAX_RECORD};
use super::writer::{Append, Health, Writer};
use super::{EventLog, LogError, Offset, Record, Topic};
use crate::settings::Fsync;

/// Bytes kept allocated past the end of the usage file: room for the events of every request
/// admitted before a full disk is noticed (an event is about a kilobyte).
pub const USAGE_HEADROOM: u64 = 4 << 20;
/// How often a writer that could not keep its headroom tries again.
pub const HEADROOM_RETRY: Duration = Duration::from_millis(500);

struct TopicHandle {
    path: PathBuf,
    tx: mpsc::Sender<Append>,
    end: watch::Receiver<Offset>,
    health: Arc<Health>,
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
        crate::files::private_dir(dir).map_err(io_err(dir))?;
        Ok(FileLog {
            config: open_topic(dir, Topic::Config, Fsync::Always, 0)?,
            usage: open_topic(dir, Topic::Usage, usage_fsync, USAGE_HEADROOM)?,
            limits: open_topic(dir, Topic::Limits, Fsync::Always, 0)?,
        })
    }

    fn topic(&self, t: Topic) -> &TopicHandle {
        match t {
            Topic::Config => &self.config,
            Topic::Usage => &self.usage,
            Topic::Limits => &self.limits,
        }
    }

    /// The file of a topic under a log dir.
    pub fn path_of(dir: &Path, topic: Topic) -> PathBuf {
        dir.join(format!("{}.log", topic.name()))
    }
}

fn open_topic(
    dir: &Path,
    topic: Topic,
    fsync: Fsync,
    headroom: u64,
) -> Result<TopicHandle, LogError> {
    let path = FileLog::path_of(dir, topic);
    let mut file = crate::files::private_file(&path).map_err(io_err(&path))?;
    let end = recover(&mut file, &path)?;
    let (end_tx, end_rx) = watch::channel(end);
    let (tx, rx) = mpsc::channel();
    let health = Arc::new(Health::default());
    let w = Writer {
        file,
        path: path.clone(),
        end,
        fsync,
        headroom,
        reserved: end,
        health: health.clone(),
    };
    std::thread::Builder::new()
        .name(format!("log-{}", topic.name()))
        .spawn(move || w.run(rx, end_tx))
        .map_err(io_err(&path))?;
    Ok(TopicHandle {
        path,
        tx,
        end: end_rx,
        health,
    })
}

/// Scans the file, cuts a torn tail, refuses corruption, and returns the end offset.
fn recover(file: &mut File, path: &Path) -> Result<Offset, LogError> {
    let io = io_err(path);
    let scan = frame::scan(file).map_err(&io)?;
    let end = match scan.damage {
        None => scan.clean_end,
        Some(Damage::TornTail { at }) => {
            tracing::warn!(
                path = %path.display(),
                offset = at,
                dropped_bytes = scan.total - at,
                "log: cutting a torn tail (an unfinished write, never acknowledged)"
            );
            file.set_len(at).map_err(&io)?;
            file.sync_data().map_err(&io)?;
            at
        }
        Some(Damage::Corrupt { at, resumes, .. }) => {
            return Err(LogError::Corrupt {
                path: path.display().to_string(),
                offset: at,
                resumes,
            })
        }
    };
    file.seek(SeekFrom::Start(end)).map_err(&io)?;
    Ok(end)
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
    // At least one whole frame after a batch marker.
    let len = (end - from).min(max_bytes.max(2 * HEADER + 16 + MAX_BODY) as u64) as usize;
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut data = vec![0u8; len];
    file.read_exact(&mut data).map_err(io_err(path))?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some((f, next)) = frame::frame_at(&data, pos) {
        if let Frame::Record { key, payload } = f {
            out.push(Record {
                offset: from + pos as u64,
                next: from + next as u64,
                key: key.to_vec(),
                payload: payload.to_vec(),
            });
            if next >= max_bytes {
                break;
            }
        }
        pos = next;
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
        self.append_batch(topic, vec![(key, payload)])
    }

    /// Writes the records as one unit: after a crash or a failed write, either all of them are
    /// in the file or none is (see [`super::frame`]).
    fn append_batch(
        &self,
        topic: Topic,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> BoxFuture<'static, Result<Offset, LogError>> {
        if let Some(size) = records
            .iter()
            .find(|(k, p)| p.len() > MAX_RECORD || k.len() > MAX_KEY)
            .map(|(k, p)| k.len() + p.len())
        {
            return async move { Err(LogError::TooLarge(size)) }.boxed();
        }
        if records.is_empty() || records.len() > MAX_BATCH {
            let n = records.len();
            return async move {
                Err(LogError::Batch(format!(
                    "{n} records (a batch holds 1 to {MAX_BATCH})"
                )))
            }
            .boxed();
        }
        let (ack, done) = oneshot::channel();
        let sent = self.topic(topic).tx.send(Append { records, ack });
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
        // The reading thread works at its caller's priority (see `crate::priority::Priority`).
        let priority = crate::priority::Priority::current();
        async move {
            super::blocking("file log read", move || {
                priority.apply();
                read_range(&path, from, end, max_bytes)
            })
            .await?
        }
        .boxed()
    }

    fn watch_end(&self, topic: Topic) -> watch::Receiver<Offset> {
        self.topic(topic).end.clone()
    }

    fn accepts_usage(&self) -> bool {
        let h = &self.usage.health;
        !h.no_headroom.load(Ordering::Acquire) && !h.poisoned.load(Ordering::Acquire)
    }

    fn unavailable(&self) -> Vec<String> {
        Topic::ALL
            .iter()
            .filter_map(|t| self.topic(*t).health.reason.lock().clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

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
    async fn corrupt_middle_frame_stops_the_open_naming_file_and_offset() {
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
        let Err(e) = FileLog::open(dir.path(), Fsync::Always) else {
            panic!("a damaged log must not open");
        };
        let text = e.to_string();
        assert!(
            text.contains("usage.log") && text.contains(&format!("byte {frame}")),
            "{text}"
        );
        assert!(text.contains("tollgate log salvage"), "{text}");
        assert_eq!(std::fs::read(&path).unwrap(), data, "nothing was cut");
    }

    #[tokio::test]
    async fn a_batch_is_read_whole_and_a_cut_batch_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.log");
        {
            let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
            log.append(Topic::Config, b"a".to_vec(), vec![1; 10])
                .await
                .unwrap();
            let batch = (0..5u8).map(|i| (b"b".to_vec(), vec![i; 10])).collect();
            log.append_batch(Topic::Config, batch).await.unwrap();
            let recs = read_all(&log, Topic::Config).await;
            assert_eq!(recs.len(), 6);
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
        let recs = read_all(&log, Topic::Config).await;
        assert_eq!(
            recs.len(),
            1,
            "the whole batch is gone, the record before it stays"
        );
    }

    #[tokio::test]
    async fn usage_file_keeps_headroom_without_changing_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
        log.append(Topic::Usage, b"k".to_vec(), vec![1; 100])
            .await
            .unwrap();
        let meta = std::fs::metadata(dir.path().join("usage.log")).unwrap();
        assert_eq!(meta.len(), (HEADER + 2 + 1 + 100) as u64);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            // Filesystems that cannot preallocate skip the headroom.
            if meta.blocks() > 8 {
                assert!(meta.blocks() * 512 >= USAGE_HEADROOM);
            }
        }
        assert!(log.accepts_usage());
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
