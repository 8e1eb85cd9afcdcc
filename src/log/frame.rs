//! The embedded log's on-disk format, and the scans that check, recover and salvage it.
//!
//! # Format
//! A topic file is a sequence of frames, each `[u32 LE body length][u32 LE CRC-32 of body][body]`.
//! A record's body is `[u16 LE key length][key][payload]` (key at most [`MAX_KEY`] bytes), where
//! payload is an Avro single-object-encoded event; its offset is the byte position of its frame.
//! A batch marker's body is `[u16 LE 0xFFFF][b"TGBATCH1"][u32 LE n]`: the `n` (2 ..= [`MAX_BATCH`])
//! record frames after it were written as one unit and count only when all of them are whole.
//! (A marker's key length is one no record has, so a binary that predates markers refuses the
//! file, failing to decode it, rather than cutting it.)
//!
//! # Damage
//! A scan walks frames from the start. Bytes that do not form a whole, intact frame are either
//! - a **torn tail**: no intact frame follows them, so they are one unfinished write (a crash
//!   mid-append, or a batch cut short); they were never acknowledged and are cut, from the start
//!   of the unfinished batch if they are inside one; or
//! - **corruption**: intact frames follow, so acknowledged data was damaged. Nothing is cut:
//!   opening fails, naming the file and offset, and `tollgate log salvage` keeps every intact
//!   frame (dropping whole batches that lost a frame).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

/// Bytes before a frame's body.
pub const HEADER: usize = 8;
/// Largest payload of one record.
pub const MAX_RECORD: usize = 8 << 20;
/// Largest key of one record (`u16::MAX` marks a batch marker).
pub const MAX_KEY: usize = u16::MAX as usize - 1;
/// Most records in one batch.
pub const MAX_BATCH: usize = 4096;
/// Largest body of any frame.
pub const MAX_BODY: usize = 2 + MAX_KEY + MAX_RECORD;

const MARKER_KEY: u16 = u16::MAX;
const MARKER_MAGIC: &[u8; 8] = b"TGBATCH1";
const MARKER_BODY: usize = 2 + MARKER_MAGIC.len() + 4;

/// A frame's body, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Record {
        key: &'a [u8],
        payload: &'a [u8],
    },
    /// The next `n` records form one batch.
    Batch(u32),
}

/// Appends a record frame to `out`.
pub fn encode_record(out: &mut Vec<u8>, key: &[u8], payload: &[u8]) {
    let mut body = Vec::with_capacity(2 + key.len());
    body.extend_from_slice(&(key.len() as u16).to_le_bytes());
    body.extend_from_slice(key);
    encode_body(out, &[&body, payload]);
}

/// Appends a batch marker for the `n` records that follow.
pub fn encode_marker(out: &mut Vec<u8>, n: u32) {
    encode_body(
        out,
        &[&MARKER_KEY.to_le_bytes(), MARKER_MAGIC, &n.to_le_bytes()],
    );
}

fn encode_body(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The declared body length of a frame header, if plausible.
fn body_len(head: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    (2..=MAX_BODY).contains(&len).then_some(len)
}

/// Parses a body whose CRC matched.
fn parse_body(body: &[u8]) -> Option<Frame<'_>> {
    let key_len = u16::from_le_bytes([body[0], body[1]]);
    if key_len == MARKER_KEY {
        let n = (body.len() == MARKER_BODY && &body[2..10] == MARKER_MAGIC)
            .then(|| u32::from_le_bytes([body[10], body[11], body[12], body[13]]))?;
        return (2..=MAX_BATCH as u32)
            .contains(&n)
            .then_some(Frame::Batch(n));
    }
    let (key, payload) = body[2..].split_at_checked(usize::from(key_len))?;
    Some(Frame::Record { key, payload })
}

/// The frame at `pos` of `data` and the position after it, if it is whole and intact.
pub fn frame_at(data: &[u8], pos: usize) -> Option<(Frame<'_>, usize)> {
    let len = body_len(data.get(pos..pos + HEADER)?)?;
    let head = &data[pos..pos + HEADER];
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let body = data.get(pos + HEADER..pos + HEADER + len)?;
    (crc32fast::hash(body) == crc)
        .then(|| parse_body(body))
        .flatten()
        .map(|f| (f, pos + HEADER + len))
}

/// What is wrong at the first bad frame of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// From `at` to the end of the file: one unfinished write, safe to cut.
    TornTail { at: u64 },
    /// A bad frame at `at` (in a batch starting at `batch`, if any); intact frames resume at `resumes`.
    Corrupt {
        at: u64,
        resumes: u64,
        batch: Option<u64>,
    },
}

/// One frame as a scan yields it: its offset and the owned body.
pub struct Owned {
    pub at: u64,
    pub next: u64,
    pub body: Vec<u8>,
}

impl Owned {
    pub fn frame(&self) -> Option<Frame<'_>> {
        parse_body(&self.body)
    }
}

/// Reads frames one by one from a position of a file.
pub struct Walker<'f> {
    reader: BufReader<&'f File>,
    pub pos: u64,
    pub total: u64,
}

impl<'f> Walker<'f> {
    pub fn new(file: &'f File, from: u64) -> std::io::Result<Self> {
        let total = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader.seek(SeekFrom::Start(from))?;
        Ok(Walker {
            reader,
            pos: from,
            total,
        })
    }

    /// The next frame: `Ok(None)` at a clean end, `Err(at)` (the position) at a bad frame.
    pub fn next_frame(&mut self) -> std::io::Result<Result<Option<Owned>, u64>> {
        if self.pos >= self.total {
            return Ok(Ok(None));
        }
        let at = self.pos;
        let mut head = [0u8; HEADER];
        if self.reader.read_exact(&mut head).is_err() {
            return Ok(Err(at));
        }
        let Some(len) = body_len(&head) else {
            return Ok(Err(at));
        };
        let mut body = vec![0u8; len];
        if self.reader.read_exact(&mut body).is_err() {
            return Ok(Err(at));
        }
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if crc32fast::hash(&body) != crc || parse_body(&body).is_none() {
            return Ok(Err(at));
        }
        self.pos = at + (HEADER + len) as u64;
        Ok(Ok(Some(Owned {
            at,
            next: self.pos,
            body,
        })))
    }

    /// Continues at `pos` (after a resync).
    pub fn seek(&mut self, pos: u64) -> std::io::Result<()> {
        self.reader.seek(SeekFrom::Start(pos))?;
        self.pos = pos;
        Ok(())
    }
}

/// The first position after `from` where an intact frame starts, if any.
pub fn find_next_frame(file: &File, from: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    let total = file.metadata()?.len();
    let mut start = from;
    while start < total {
        // A window of CHUNK candidate positions plus room for one whole frame after the last.
        let want = (total - start).min((CHUNK + HEADER + MAX_BODY) as u64) as usize;
        let mut data = vec![0u8; want];
        let mut f = file;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut data)?;
        let candidates = want.min(CHUNK);
        for i in 0..candidates {
            if frame_at(&data, i).is_some() {
                return Ok(Some(start + i as u64));
            }
        }
        start += candidates as u64;
    }
    Ok(None)
}

/// The result of scanning a whole file: its intact prefix and the first damage, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Where the intact prefix ends (a batch boundary).
    pub clean_end: u64,
    pub records: u64,
    pub batches: u64,
    pub total: u64,
    pub damage: Option<Damage>,
}

/// Scans `file` from the start up to the first damage and classifies it.
pub fn scan(file: &File) -> std::io::Result<Scan> {
    let mut w = Walker::new(file, 0)?;
    let mut out = Scan {
        clean_end: 0,
        records: 0,
        batches: 0,
        total: w.total,
        damage: None,
    };
    // An open batch: where its marker is, how many records it still needs, how many it has.
    let mut open: Option<(u64, u32, u32)> = None;
    loop {
        let bad = match w.next_frame()? {
            Ok(None) => {
                if let Some((batch, _, _)) = open {
                    out.damage = Some(Damage::TornTail { at: batch });
                }
                return Ok(out);
            }
            Ok(Some(f)) => match (f.frame(), open.as_mut()) {
                (Some(Frame::Batch(n)), None) => {
                    open = Some((f.at, n, 0));
                    continue;
                }
                (Some(Frame::Record { .. }), Some((_, n, have))) => {
                    *have += 1;
                    if *have == *n {
                        out.records += u64::from(*n);
                        out.batches += 1;
                        out.clean_end = f.next;
                        open = None;
                    }
                    continue;
                }
                (Some(Frame::Record { .. }), None) => {
                    out.records += 1;
                    out.clean_end = f.next;
                    continue;
                }
                // A marker inside an unfinished batch.
                _ => f.at,
            },
            Err(at) => at,
        };
        let batch = open.map(|(b, _, _)| b);
        out.damage = Some(match find_next_frame(file, bad + 1)? {
            None => Damage::TornTail {
                at: batch.unwrap_or(bad),
            },
            Some(resumes) => Damage::Corrupt {
                at: bad,
                resumes,
                batch,
            },
        });
        return Ok(out);
    }
}

/// What salvaging a file kept and lost.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Salvage {
    /// The intact frames, re-framed: the new file's bytes.
    pub bytes: Vec<u8>,
    pub kept: u64,
    /// Byte ranges of the old file that held no intact frame.
    pub lost_ranges: Vec<(u64, u64)>,
    /// Records dropped because their batch lost a frame.
    pub dropped_in_batches: u64,
    /// Records dropped because `keep` refused them (intact frames whose payload does not decode).
    pub refused: Vec<u64>,
}

/// Keeps every intact frame of `file` (whole batches only, and records `keep` accepts),
/// resyncing past damage.
pub fn salvage(file: &File, keep: &dyn Fn(&[u8]) -> bool) -> std::io::Result<Salvage> {
    let mut w = Walker::new(file, 0)?;
    let mut out = Salvage::default();
    let mut open: Option<(u32, Vec<Owned>)> = None;
    // Records still expected of a batch that lost a frame: dropped as they come (assuming the
    // damage took one frame), so no part of a broken batch is kept.
    let mut broken = 0u32;
    loop {
        match w.next_frame()? {
            Ok(None) => break,
            Ok(Some(f)) => match f.frame() {
                Some(Frame::Batch(n)) => {
                    broken = 0;
                    if let Some((_, partial)) = open.replace((n, Vec::new())) {
                        out.dropped_in_batches += partial.len() as u64;
                    }
                }
                Some(Frame::Record { .. }) if broken > 0 => {
                    broken -= 1;
                    out.dropped_in_batches += 1;
                }
                Some(Frame::Record { .. }) => {
                    let done = match open.as_mut() {
                        Some((n, recs)) => {
                            recs.push(f);
                            (recs.len() == *n as usize).then(|| std::mem::take(recs))
                        }
                        None => Some(vec![f]),
                    };
                    if let Some(recs) = done {
                        open = None;
                        keep_records(&mut out, recs, keep);
                    }
                }
                None => {}
            },
            Err(bad) => {
                if let Some((n, partial)) = open.take() {
                    out.dropped_in_batches += partial.len() as u64;
                    broken = n.saturating_sub(partial.len() as u32 + 1);
                } else {
                    broken = broken.saturating_sub(1);
                }
                let resume = find_next_frame(file, bad + 1)?;
                out.lost_ranges.push((bad, resume.unwrap_or(w.total)));
                match resume {
                    Some(r) => w.seek(r)?,
                    None => break,
                }
            }
        }
    }
    if let Some((_, partial)) = open {
        out.dropped_in_batches += partial.len() as u64;
    }
    Ok(out)
}

fn keep_records(out: &mut Salvage, recs: Vec<Owned>, keep: &dyn Fn(&[u8]) -> bool) {
    let mut accepted = Vec::with_capacity(recs.len());
    for r in recs {
        match r.frame() {
            Some(Frame::Record { payload, .. }) if keep(payload) => accepted.push(r),
            _ => out.refused.push(r.at),
        }
    }
    if accepted.len() > 1 {
        encode_marker(&mut out.bytes, accepted.len() as u32);
    }
    for r in accepted {
        if let Some(Frame::Record { key, payload }) = r.frame() {
            encode_record(&mut out.bytes, key, payload);
        }
        out.kept += 1;
    }
}

/// The last frame boundary of `data` at or before `limit`.
pub fn boundary_before(data: &[u8], limit: u64) -> u64 {
    let mut pos = 0usize;
    while let Some((_, next)) = frame_at(data, pos) {
        if next as u64 > limit {
            break;
        }
        pos = next;
    }
    pos as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let f = File::open(&path).unwrap();
        (dir, f)
    }

    fn records(n: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            encode_record(&mut out, b"k", &[i; 40]);
        }
        out
    }

    #[test]
    fn clean_file_scans_whole() {
        let mut data = records(3);
        encode_marker(&mut data, 2);
        data.extend(records(2));
        let (_d, f) = file_of(&data);
        let s = scan(&f).unwrap();
        assert_eq!((s.records, s.batches, s.damage), (5, 1, None));
        assert_eq!(s.clean_end, data.len() as u64);
    }

    #[test]
    fn cut_batch_is_a_torn_tail_from_its_marker() {
        let mut data = records(3);
        let marker = data.len() as u64;
        encode_marker(&mut data, 3);
        data.extend(records(3));
        for cut in [5, 55] {
            let (_d, f) = file_of(&data[..data.len() - cut]);
            let s = scan(&f).unwrap();
            assert_eq!(s.damage, Some(Damage::TornTail { at: marker }), "cut {cut}");
            assert_eq!((s.clean_end, s.records), (marker, 3));
        }
    }

    #[test]
    fn flipped_byte_with_frames_after_is_corruption() {
        let mut data = records(10);
        let frame = data.len() / 10;
        data[frame * 2 + 1] ^= 0x40; // the length field of the third frame
        let (_d, f) = file_of(&data);
        let s = scan(&f).unwrap();
        let at = (frame * 2) as u64;
        assert_eq!(
            s.damage,
            Some(Damage::Corrupt {
                at,
                resumes: at + frame as u64,
                batch: None
            })
        );
        let kept = salvage(&f, &|_| true).unwrap();
        assert_eq!(kept.kept, 9);
        assert_eq!(kept.lost_ranges, vec![(at, at + frame as u64)]);
        assert_eq!(boundary_before(&kept.bytes, at + 3), at);
        let (_d2, f2) = file_of(&kept.bytes);
        assert_eq!(scan(&f2).unwrap().records, 9);
    }

    #[test]
    fn salvage_drops_a_damaged_batch_whole() {
        let mut data = records(1);
        encode_marker(&mut data, 3);
        let first = data.len();
        data.extend(records(3));
        data.extend(records(1));
        data[first + 20] ^= 1; // the first record of the batch
        let (_d, f) = file_of(&data);
        let s = salvage(&f, &|_| true).unwrap();
        assert_eq!((s.kept, s.dropped_in_batches), (2, 2));
    }

    #[test]
    fn zeros_at_the_end_are_a_torn_tail() {
        let mut data = records(2);
        let end = data.len() as u64;
        data.extend([0u8; 300]);
        let (_d, f) = file_of(&data);
        assert_eq!(scan(&f).unwrap().damage, Some(Damage::TornTail { at: end }));
    }
}
