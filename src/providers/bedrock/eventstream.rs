//! The AWS event stream (`application/vnd.amazon.eventstream`), as Bedrock's streaming actions
//! send it: a sequence of binary frames
//!
//! ```text
//! total length u32 BE | headers length u32 BE | prelude CRC32 | headers | payload | message CRC32
//! ```
//!
//! whose headers carry `:message-type` (`event` or `exception`), `:event-type` (or
//! `:exception-type`) and `:content-type`. Frames are parsed and both CRCs checked by
//! `aws-smithy-eventstream`; this decoder only buffers bytes as they arrive, refuses a frame
//! longer than its bound before buffering it, and tells whether the stream ended inside one.

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::HeaderValue;
use bytes::{Bytes, BytesMut};

use crate::providers::Garbled;

/// The smallest well-formed frame: the 12-byte prelude and the 4-byte message CRC.
const MIN_FRAME: usize = 16;

/// One decoded event-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `:event-type` (for events) or `:exception-type` (for exceptions); empty when absent.
    pub event_type: String,
    /// `:message-type`: `event`, `exception` or `error`; empty when absent.
    pub message_type: String,
    pub payload: Bytes,
}

/// Incremental decoder of event-stream frames.
#[derive(Debug)]
pub struct EventStreamDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl EventStreamDecoder {
    /// A decoder refusing frames longer than `max_frame` bytes (whole frame, prelude included).
    pub fn new(max_frame: usize) -> Self {
        EventStreamDecoder {
            buf: BytesMut::new(),
            max_frame: max_frame.max(MIN_FRAME),
        }
    }

    /// Appends bytes read from the response body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `None` when more bytes are needed. A frame longer than the bound,
    /// a bad length or a CRC mismatch is `Garbled`; after an error the stream is unusable.
    #[expect(
        clippy::should_implement_trait,
        reason = "fallible: an Iterator of Results would hide when to stop"
    )]
    pub fn next(&mut self) -> Result<Option<Message>, Garbled> {
        let Some(prelude) = self.buf.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) else {
            return Ok(None);
        };
        let total = u32::from_be_bytes(prelude) as usize;
        if total < MIN_FRAME {
            return Err(Garbled(format!("event stream: a frame of {total} bytes")));
        }
        if total > self.max_frame {
            return Err(Garbled(format!(
                "event stream: a frame of {total} bytes, over the bound of {}",
                self.max_frame
            )));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = self.buf.split_to(total).freeze();
        let message =
            read_message_from(frame).map_err(|e| Garbled(format!("event stream: {e}")))?;
        let mut out = Message {
            event_type: String::new(),
            message_type: String::new(),
            payload: message.payload().clone(),
        };
        let mut exception_type = String::new();
        for header in message.headers() {
            let HeaderValue::String(value) = header.value() else {
                continue;
            };
            match header.name().as_str() {
                ":event-type" => out.event_type = value.as_str().to_owned(),
                ":exception-type" | ":error-code" => exception_type = value.as_str().to_owned(),
                ":message-type" => out.message_type = value.as_str().to_owned(),
                _ => {}
            }
        }
        if out.event_type.is_empty() {
            out.event_type = exception_type;
        }
        Ok(Some(out))
    }

    /// Whether bytes of an unfinished frame are buffered: at the end of the body, a truncated
    /// stream.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Encodes one frame (for tests and mocks): headers are string-valued.
#[cfg(test)]
pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, Message as Frame};
    let frame = headers
        .iter()
        .fold(Frame::new(payload.to_vec()), |m, (n, v)| {
            m.add_header(Header::new(
                n.to_string(),
                HeaderValue::String(v.to_string().into()),
            ))
        });
    let mut out = Vec::new();
    write_message_to(&frame, &mut out).unwrap();
    out
}

/// An event frame as Bedrock sends it.
#[cfg(test)]
pub(crate) fn event(event_type: &str, payload: &str) -> Vec<u8> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut bytes = event("messageStart", r#"{"role":"assistant"}"#);
        bytes.extend(event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        ));
        for split in 0..bytes.len() {
            let mut d = EventStreamDecoder::new(1 << 20);
            let mut seen = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                d.push(part);
                while let Some(m) = d.next().unwrap() {
                    seen.push(m);
                }
            }
            assert_eq!(seen.len(), 2, "split at {split}");
            assert_eq!(seen[0].event_type, "messageStart");
            assert_eq!(seen[0].message_type, "event");
            assert_eq!(
                &seen[1].payload[..],
                br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#
            );
            assert!(!d.has_partial());
        }
    }

    #[test]
    fn exceptions_carry_their_type() {
        let mut d = EventStreamDecoder::new(1 << 20);
        d.push(&encode(
            &[
                (":exception-type", "throttlingException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        let m = d.next().unwrap().unwrap();
        assert_eq!(
            (m.event_type.as_str(), m.message_type.as_str()),
            ("throttlingException", "exception")
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_any_splits_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), cut in 0usize..200) {
            let mut d = EventStreamDecoder::new(1 << 10);
            let cut = cut.min(bytes.len());
            for part in [&bytes[..cut], &bytes[cut..]] {
                d.push(part);
                while let Ok(Some(_)) = d.next() {}
            }
        }

        #[test]
        fn frames_round_trip(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300), name in "[a-zA-Z]{1,20}", cut in 0usize..400) {
            let frame = encode(&[(":event-type", &name), (":message-type", "event")], &payload);
            let cut = cut.min(frame.len());
            let mut d = EventStreamDecoder::new(1 << 10);
            d.push(&frame[..cut]);
            let early = d.next().unwrap();
            d.push(&frame[cut..]);
            let m = match early { Some(m) => m, None => d.next().unwrap().unwrap() };
            proptest::prop_assert_eq!(&m.event_type, &name);
            proptest::prop_assert_eq!(&m.payload[..], &payload[..]);
            proptest::prop_assert!(!d.has_partial());
        }
    }

    #[test]
    fn truncation_is_visible() {
        let bytes = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let mut d = EventStreamDecoder::new(1 << 20);
        d.push(&bytes[..bytes.len() - 3]);
        assert_eq!(d.next().unwrap(), None);
        assert!(d.has_partial());
    }

    #[test]
    fn corrupt_frames_are_garbled() {
        let good = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        // A flipped payload byte: the message CRC no longer matches.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        let mut d = EventStreamDecoder::new(1 << 20);
        d.push(&bad);
        assert!(d.next().is_err());
        // A flipped headers-length byte: the prelude CRC no longer matches.
        let mut bad = good.clone();
        bad[7] ^= 1;
        let mut d = EventStreamDecoder::new(1 << 20);
        d.push(&bad);
        assert!(d.next().is_err());
        // Lengths too small or over the bound, refused before buffering the frame.
        let mut d = EventStreamDecoder::new(1 << 20);
        d.push(&[0, 0, 0, 3, 0, 0, 0, 0]);
        assert!(d.next().is_err());
        let mut d = EventStreamDecoder::new(64);
        d.push(&[0, 0x10, 0, 0]);
        assert!(d.next().unwrap_err().0.contains("over the bound"));
        // Garbage of every short length never panics.
        for len in 0..40 {
            let mut d = EventStreamDecoder::new(1 << 20);
            d.push(&vec![0xff; len]);
            let _ = d.next();
        }
    }
}
