//! `tollgate log verify` and `tollgate log salvage`: check the embedded log's files (and the usage
//! store's positions in them) and keep every intact frame of a damaged file. Both run on a
//! stopped server's data dir. Here, not in [`crate::log`], because it reads and rewinds the usage
//! store's positions too: the log's adapters do not know the store.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::log::file::FileLog;
use crate::log::frame::{self, Damage};
use crate::log::Topic;

use crate::ledger::sync::CONSUMERS;

/// Why a check or a salvage could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("usage store: {0}")]
    Store(#[from] crate::store::StoreError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What verifying a data dir found: the report to print, and whether anything needs salvage.
pub struct Verified {
    pub report: String,
    pub healthy: bool,
}

fn log_dir(data: &Path) -> PathBuf {
    data.join("log")
}

fn store_path(data: &Path) -> PathBuf {
    data.join("usage.sqlite")
}

/// Checks every topic file of `<data>/log` and the store's positions in them.
pub fn verify(data: &Path) -> Result<Verified, ToolError> {
    let mut report = String::new();
    let mut healthy = true;
    let mut ends = [0u64; 3];
    for topic in Topic::ALL {
        let path = FileLog::path_of(&log_dir(data), topic);
        if !path.exists() {
            let _ = writeln!(report, "{}: absent", path.display());
            continue;
        }
        let (end, ok) = verify_file(&path, &mut report)?;
        ends[topic.index()] = end;
        healthy &= ok;
    }
    let store = store_path(data);
    if store.exists() {
        for (consumer, at) in crate::store::sqlite::read_offsets(&store)? {
            let Some((_, topic)) = CONSUMERS.iter().find(|(c, _)| *c == consumer) else {
                continue;
            };
            let end = ends[topic.index()];
            let ok = at <= end && is_boundary(&FileLog::path_of(&log_dir(data), *topic), at)?;
            healthy &= ok;
            let _ = writeln!(
                report,
                "{}: {consumer} has read {}.log up to byte {at} of {end}: {}",
                store.display(),
                topic.name(),
                if ok {
                    "ok"
                } else {
                    "NOT A POSITION OF THE LOG (the log lost data or was replaced); run `tollgate log salvage`"
                }
            );
        }
    }
    Ok(Verified { report, healthy })
}

/// Scans one topic file and reports it; returns where its intact frames end, and whether it
/// needs no salvage.
fn verify_file(path: &Path, report: &mut String) -> Result<(u64, bool), ToolError> {
    let file = File::open(path).map_err(io(path))?;
    let s = frame::scan(&file).map_err(io(path))?;
    let head = format!(
        "{}: {} bytes, {} records ({} batches) intact up to byte {}",
        path.display(),
        s.total,
        s.records,
        s.batches,
        s.clean_end
    );
    let mut healthy = true;
    let _ = match s.damage {
        None => writeln!(report, "{head}: ok"),
        Some(Damage::TornTail { at }) => writeln!(
            report,
            "{head}: torn tail at byte {at} ({} bytes of an unfinished write, never acknowledged; cut at the next start)",
            s.total - at
        ),
        Some(Damage::Corrupt { at, resumes, .. }) => {
            healthy = false;
            writeln!(
                report,
                "{head}: DAMAGED at byte {at}, intact frames resume at byte {resumes} \
                 ({} bytes after the damage); the server will not start: run `tollgate log salvage`",
                s.total - resumes
            )
        }
    };
    Ok((s.clean_end, healthy))
}

/// Whether `at` is the end of the file or the start of an intact frame of it.
pub fn is_boundary(path: &Path, at: u64) -> Result<bool, ToolError> {
    if at == 0 {
        return Ok(true);
    }
    let file = File::open(path).map_err(io(path))?;
    let mut w = frame::Walker::new(&file, at).map_err(io(path))?;
    Ok(at == w.total || matches!(w.next_frame().map_err(io(path))?, Ok(Some(_))))
}

/// Salvages every damaged topic file of `<data>/log`, then moves the store's positions back to
/// where the salvaged files still match (the store drops events it already has). `keep` says
/// whether a record's payload decodes as its topic's event.
pub fn salvage(data: &Path, keep: &dyn Fn(Topic, &[u8]) -> bool) -> Result<String, ToolError> {
    let mut report = String::new();
    let mut safe: [Option<u64>; 3] = [None; 3];
    for topic in Topic::ALL {
        let path = FileLog::path_of(&log_dir(data), topic);
        if path.exists() {
            safe[topic.index()] = Some(salvage_file(topic, &path, keep, &mut report)?);
        }
    }
    rewind_store(data, &safe, &mut report)?;
    Ok(report)
}

/// Salvages one topic file (when damaged: the damaged one is moved aside) and reports it;
/// returns the end of what is unchanged.
fn salvage_file(
    topic: Topic,
    path: &Path,
    keep: &dyn Fn(Topic, &[u8]) -> bool,
    report: &mut String,
) -> Result<u64, ToolError> {
    let old = std::fs::read(path).map_err(io(path))?;
    let file = File::open(path).map_err(io(path))?;
    let s = frame::salvage(&file, &|p| keep(topic, p)).map_err(io(path))?;
    if s.bytes == old {
        let _ = writeln!(
            report,
            "{}: intact, {} records; unchanged",
            path.display(),
            s.kept
        );
        return Ok(old.len() as u64);
    }
    let aside = replace(path, &s.bytes)?;
    let common = old.iter().zip(&s.bytes).take_while(|(a, b)| a == b).count() as u64;
    let _ = writeln!(
        report,
        "{}: kept {} records ({} bytes); the damaged file is now {}",
        path.display(),
        s.kept,
        s.bytes.len(),
        aside.display()
    );
    report_losses(topic, &s, report);
    Ok(frame::boundary_before(&s.bytes, common))
}

/// What a salvage of a topic's file dropped.
fn report_losses(topic: Topic, s: &frame::Salvage, report: &mut String) {
    for (from, to) in &s.lost_ranges {
        let _ = writeln!(
            report,
            "  lost bytes {from}..{to} ({} bytes): no intact frame",
            to - from
        );
    }
    if s.dropped_in_batches > 0 {
        let _ = writeln!(
            report,
            "  dropped {} intact records of batches that lost a frame (a batch commits whole or not at all)",
            s.dropped_in_batches
        );
    }
    if !s.refused.is_empty() {
        let _ = writeln!(
            report,
            "  dropped {} intact records that do not decode as {} events, at bytes {:?}",
            s.refused.len(),
            topic.name(),
            s.refused
        );
    }
}

/// Moves the store's positions back to at most `safe` (per topic: the end of what is unchanged).
fn rewind_store(
    data: &Path,
    safe: &[Option<u64>; 3],
    report: &mut String,
) -> Result<(), ToolError> {
    let store = store_path(data);
    if !store.exists() {
        return Ok(());
    }
    for (consumer, at) in crate::store::sqlite::read_offsets(&store)? {
        let Some((_, topic)) = CONSUMERS.iter().find(|(c, _)| *c == consumer) else {
            continue;
        };
        let Some(limit) = safe[topic.index()] else {
            continue;
        };
        let path = FileLog::path_of(&log_dir(data), *topic);
        let ok = at <= limit && is_boundary(&path, at)?;
        if !ok {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let to = frame::boundary_before(&bytes, at.min(limit));
            crate::store::sqlite::rewind_offset(&store, &consumer, to)?;
            let _ = writeln!(
                report,
                "{}: {consumer} moved back from byte {at} to {to} of {}.log: it reads again from there \
                 (events it already has are not counted twice); events it has beyond the log stay in the store",
                store.display(),
                topic.name()
            );
        }
    }
    Ok(())
}

/// Writes `bytes` as the new `path` (0600, synced) and moves the old file aside; returns where.
fn replace(path: &Path, bytes: &[u8]) -> Result<PathBuf, ToolError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("log.damaged-{stamp}"));
    let tmp = path.with_extension("log.salvage");
    let mut f = crate::files::private_file(&tmp).map_err(io(&tmp))?;
    f.set_len(0).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(path, &aside).map_err(io(path))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(aside)
}
