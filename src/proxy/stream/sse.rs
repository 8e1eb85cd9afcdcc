//! Server-sent events framing: splitting a provider's byte stream into whole events, and reading
//! what an event is (content, usage, the final `[DONE]`) for metering.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::domain::pricing::TokenUsage;
use crate::proxy::meter::WireUsage;

/// Splits a byte stream into SSE events (blocks ending in a blank line), incrementally: each byte
/// is examined once however the stream is chunked (the search resumes where the last one ended),
/// and one event may hold at most `max_event` bytes.
pub struct SseSplitter {
    buf: BytesMut,
    /// How much of `buf` is known to hold no event end.
    scanned: usize,
    max_event: usize,
}

/// An event grew past the cap; it held this many bytes when it was dropped.
#[derive(Debug, PartialEq)]
pub struct EventTooLarge(pub usize);

impl SseSplitter {
    pub fn new(max_event: usize) -> Self {
        SseSplitter {
            buf: BytesMut::new(),
            scanned: 0,
            max_event,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole event, terminator included; an error once an unfinished event passes the
    /// cap (the buffer is dropped then: nothing of it is forwarded).
    pub fn next_event(&mut self) -> Result<Option<Bytes>, EventTooLarge> {
        match find_blank_line(&self.buf, self.scanned) {
            Some(end) if end <= self.max_event => {
                self.scanned = 0;
                Ok(Some(self.buf.split_to(end).freeze()))
            }
            Some(_) => Err(self.drop_oversized()),
            None if self.buf.len() > self.max_event => Err(self.drop_oversized()),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    fn drop_oversized(&mut self) -> EventTooLarge {
        let dropped = std::mem::take(&mut self.buf);
        self.scanned = 0;
        EventTooLarge(dropped.len())
    }

    /// Whatever is left when the stream ends without a final blank line.
    pub fn rest(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// The end of the first `\n\n` or `\r\n\r\n` whose final `\n` is at or after `from`. Both end in
/// `\n`, so the first `\n` completing either is the earliest end.
fn find_blank_line(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = b[i..].iter().position(|&c| c == b'\n') {
        let n = i + off;
        let lf = n >= 1 && b[n - 1] == b'\n';
        let crlf = n >= 3 && &b[n - 3..n] == b"\r\n\r";
        if lf || crlf {
            return Some(n + 1);
        }
        i = n + 1;
    }
    None
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    choices: Option<Vec<ChunkChoice>>,
    usage: Option<WireUsage>,
    /// The Responses API's `response.completed` event carries the usage in its response.
    response: Option<ResponseUsage>,
}

#[derive(Deserialize)]
struct ResponseUsage {
    usage: Option<WireUsage>,
}

/// What an SSE event is, for metering.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Done,
    Data {
        usage: Option<TokenUsage>,
        chars: usize,
        usage_only: bool,
    },
    Other,
}

/// Reads the `data:` lines of an event.
pub fn classify(event: &[u8]) -> Frame {
    let mut data = Vec::new();
    for line in event.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    if data == b"[DONE]" {
        return Frame::Done;
    }
    match serde_json::from_slice::<Chunk>(&data) {
        Ok(c) => {
            let chars = c.choices.iter().flatten().map(|ch| {
                let d = ch.delta.as_ref().and_then(|d| d.content.as_deref());
                d.or(ch.text.as_deref()).map_or(0, |s| s.chars().count())
            });
            let usage_only = c.choices.as_ref().is_some_and(Vec::is_empty) && c.usage.is_some();
            let usage = c.usage.or_else(|| c.response.and_then(|r| r.usage));
            Frame::Data {
                usage: usage.map(|u| u.tokens()),
                chars: chars.sum(),
                usage_only,
            }
        }
        Err(_) => Frame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut s = SseSplitter::new(1024);
        s.push(b"data: {\"a\":1}\n\nda");
        assert_eq!(
            s.next_event().unwrap().unwrap(),
            &b"data: {\"a\":1}\n\n"[..]
        );
        assert!(s.next_event().unwrap().is_none());
        s.push(b"ta: [DONE]\r\n\r");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\n: x\n");
        assert_eq!(classify(&s.next_event().unwrap().unwrap()), Frame::Done);
        s.push(b"\n");
        assert_eq!(s.next_event().unwrap().unwrap(), &b": x\n\n"[..]);
        assert!(s.rest().is_none());
    }

    /// A blank line split between chunks in every way is found, and the earliest one wins.
    #[test]
    fn finds_terminators_across_any_split() {
        let text = b"data: a\r\n\r\ndata: b\n\ndata: c\r\n\n";
        for cut in 0..text.len() {
            let mut s = SseSplitter::new(1024);
            let mut got = Vec::new();
            for part in [&text[..cut], &text[cut..]] {
                s.push(part);
                while let Some(e) = s.next_event().unwrap() {
                    got.push(e);
                }
            }
            assert_eq!(
                got,
                vec![
                    Bytes::from_static(b"data: a\r\n\r\n"),
                    Bytes::from_static(b"data: b\n\n"),
                    Bytes::from_static(b"data: c\r\n\n"),
                ],
                "cut at {cut}"
            );
        }
    }

    /// An event that never ends is an error once past the cap, however it is chunked; before
    /// that, waiting for more examines only the new bytes (the old scanner rescanned from the
    /// event's start on every chunk: quadratic in the event's size).
    #[test]
    fn an_endless_event_is_capped_and_scanned_once() {
        let mut s = SseSplitter::new(64 * 1024);
        s.push(b"data: {\"x\":\"");
        let mut pushed = 0;
        let err = loop {
            s.push(&[b'a'; 100]);
            pushed += 100;
            assert!(s.scanned <= s.buf.len());
            match s.next_event() {
                Ok(None) => assert_eq!(s.scanned, s.buf.len()),
                other => break other,
            }
        };
        assert_eq!(err, Err(EventTooLarge(12 + pushed)));
        assert!(pushed <= 64 * 1024 + 100, "{pushed}");
        assert!(s.rest().is_none(), "nothing of the oversized event is kept");
        let mut whole = SseSplitter::new(16);
        whole.push(b"data: 0123456789abcdef\n\n");
        assert_eq!(whole.next_event(), Err(EventTooLarge(24)));
    }

    #[test]
    fn classifies_usage_and_content() {
        let content =
            br#"data: {"choices":[{"index":0,"delta":{"content":"hello"}}],"usage":null}"#;
        assert_eq!(
            classify(content),
            Frame::Data {
                usage: None,
                chars: 5,
                usage_only: false
            }
        );
        let usage = br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":0,"total_tokens":3}}"#;
        assert_eq!(
            classify(usage),
            Frame::Data {
                usage: Some(TokenUsage {
                    prompt: 3,
                    completion: 0,
                    cached: 0,
                    cache_write: 0
                }),
                chars: 0,
                usage_only: true
            }
        );
        assert_eq!(classify(b": keep-alive\n\n"), Frame::Other);
        assert_eq!(
            classify(b"data: {\"choices\":[{\"text\":\"ab\"}]}"),
            Frame::Data {
                usage: None,
                chars: 2,
                usage_only: false
            }
        );
    }
}
