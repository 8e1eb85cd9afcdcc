//! Time as the domain sees it: UTC milliseconds since the epoch, formatted as ISO-8601 strings
//! (the SDK models reject integer timestamps).

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant in milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    /// The wall clock. Only the edges (HTTP handlers, consumers) call this; the core takes time as an argument.
    pub fn now() -> Self {
        Millis((OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// `2025-01-01T00:00:00.000Z`, the shape the Portkey SDK expects.
    pub fn to_iso(self) -> String {
        let t = self.to_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }

    /// Parses an RFC 3339 / ISO-8601 timestamp with any offset.
    pub fn parse_iso(s: &str) -> Option<Self> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        Some(Millis((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The start of the minute that holds this instant.
    pub fn floor_minute(self) -> Self {
        Millis(self.0.div_euclid(60_000) * 60_000)
    }

    /// The start of the UTC day that holds this instant.
    pub fn floor_day(self) -> Self {
        Millis(self.0.div_euclid(86_400_000) * 86_400_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip() {
        let m = Millis(1_735_689_600_123);
        assert_eq!(m.to_iso(), "2025-01-01T00:00:00.123Z");
        assert_eq!(Millis::parse_iso(&m.to_iso()), Some(m));
        assert_eq!(Millis::parse_iso("2025-01-01T02:00:00.123+02:00"), Some(m));
        assert_eq!(Millis::parse_iso("yesterday"), None);
    }

    #[test]
    fn floors() {
        let m = Millis::parse_iso("2025-03-04T05:06:07.890Z").unwrap();
        assert_eq!(m.floor_minute().to_iso(), "2025-03-04T05:06:00.000Z");
        assert_eq!(m.floor_day().to_iso(), "2025-03-04T00:00:00.000Z");
        assert_eq!(Millis(-1).floor_minute(), Millis(-60_000));
    }
}
