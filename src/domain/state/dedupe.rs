//! The memory of recent usage event ids, so a redelivered usage event is folded once. Bounded
//! by event time and by count, so memory follows the event rate, not the history.

use std::collections::{HashSet, VecDeque};

use sha2::{Digest, Sha256};

use crate::domain::hash::FastHash;
use crate::domain::time::Millis;

/// How far back (in event time) usage event ids are remembered to drop redeliveries. Delivery
/// retries arrive within seconds to minutes; the usage store dedupes exactly by `event_id`
/// whatever the delay, so analytics stay exact even past this window.
pub const DEDUPE_WINDOW_MS: i64 = 15 * 60 * 1000;

/// At most this many ids are remembered (about 64 MiB), whatever the rate: at 16,000 events/s a
/// 15-minute window alone would hold 14 million ids, over a gigabyte. The newest million still
/// cover a minute of events at that rate, and redeliveries come within seconds.
pub const DEDUPE_MAX_IDS: usize = 1 << 20;

/// The ids of recent usage events, forgotten in arrival order once older than the window or
/// beyond [`DEDUPE_MAX_IDS`], so memory follows the event rate, not the history, and is bounded.
#[derive(Clone, Debug, Default)]
pub struct RecentIds {
    ids: HashSet<u128, FastHash>,
    order: VecDeque<(Millis, u128)>,
    newest: Millis,
}

impl RecentIds {
    /// False when the event id was seen within the window (of event time, `at`).
    pub fn insert_event_id(&mut self, event_id: &str, at: Millis) -> bool {
        self.insert(id_bits(event_id), at)
    }

    fn insert(&mut self, id: u128, at: Millis) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.newest = self.newest.max(at);
        let horizon = self.newest.0 - DEDUPE_WINDOW_MS;
        while let Some(&(t, old)) = self.order.front() {
            if t.0 >= horizon && self.order.len() < DEDUPE_MAX_IDS {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        self.order.push_back((at, id));
        true
    }
}

/// A compact dedupe key for an event id: the UUID's bits, or a hash of any other string.
fn id_bits(event_id: &str) -> u128 {
    match uuid::Uuid::try_parse(event_id) {
        Ok(u) => u.as_u128(),
        Err(_) => {
            let d = Sha256::digest(event_id.as_bytes());
            let mut b = [0u8; 16];
            b.copy_from_slice(&d[..16]);
            u128::from_be_bytes(b)
        }
    }
}

impl RecentIds {
    /// How many ids are remembered.
    pub(super) fn remembered(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_memory_is_bounded_at_any_rate() {
        let mut recent = RecentIds::default();
        // Far more ids than the cap, all within one second of event time.
        let n = DEDUPE_MAX_IDS as u128 + 1_000;
        for i in 0..n {
            assert!(recent.insert(i, Millis(1_000 + (i / 1_000_000) as i64)));
        }
        assert_eq!(recent.ids.len(), DEDUPE_MAX_IDS);
        assert_eq!(recent.order.len(), DEDUPE_MAX_IDS);
        // The newest are still recognised; the oldest were forgotten first.
        assert!(!recent.insert(n - 1, Millis(1_001)));
        assert!(recent.insert(0, Millis(1_001)));
    }
}
