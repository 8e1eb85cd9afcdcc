//! The reset sweep: every 30 seconds, budgets whose period rolled over get their reset events,
//! and rate counters of ended intervals or removed limits are dropped.

use std::sync::Arc;

use tokio::sync::watch;

use crate::domain::Millis;
use crate::ledger::Ledger;

/// How often the sweep runs.
const EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs until shutdown.
pub async fn run(ledger: Arc<Ledger>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
        ledger.sweep(Millis::now());
    }
}
