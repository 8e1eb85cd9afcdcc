//! The hasher of the maps touched on every request (counters, reservations, rate windows).

/// foldhash, seeded per process: SipHash showed up in profiles, and the keys of these maps are
/// server-made ids, not attacker-chosen strings.
pub type FastHash = foldhash::fast::RandomState;
