//! How a process sees its own writes, chosen once when the ledger is built: [`Local`] (embedded:
//! the only writer, its appends apply at once) or [`Follower`] (distributed: every replica's
//! appends reach state through the log, this one's included).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::RwLock;
use tokio::sync::watch;

use super::sync::StoreSync;
use super::LedgerError;
use crate::domain::{ConfigEvent, Event, State};
use crate::log::Offset;

/// How long a distributed admin command waits to read its change back from the config topic.
/// Generous: it only runs out when Kafka or this process is badly starved, and the change is
/// already durable then.
const READ_BACK: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) trait Consistency: Send + Sync {
    /// Makes config events just appended (the last at `offset`) visible in `state`.
    fn committed<'a>(
        &'a self,
        state: &'a RwLock<State>,
        events: Vec<ConfigEvent>,
        folded: watch::Receiver<u64>,
        offset: Offset,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Whether settling usage here claims threshold and exhaustion events.
    fn claims_crossings(&self) -> bool;

    /// Whether the state follows the log (other processes write it too) rather than applying
    /// this process's appends at once.
    fn follows_log(&self) -> bool;

    /// The usage store this process feeds, for read-your-writes (embedded only).
    fn sync(&self) -> Option<&StoreSync>;
}

/// Embedded: applies its appends as soon as they are durable.
pub(super) struct Local {
    pub sync: Arc<StoreSync>,
}

impl Consistency for Local {
    fn committed<'a>(
        &'a self,
        state: &'a RwLock<State>,
        events: Vec<ConfigEvent>,
        _folded: watch::Receiver<u64>,
        _offset: Offset,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        let mut state = state.write();
        for event in events {
            state.apply(&Event::Config(event));
        }
        async { Ok(()) }.boxed()
    }

    fn claims_crossings(&self) -> bool {
        true
    }

    fn follows_log(&self) -> bool {
        false
    }

    fn sync(&self) -> Option<&StoreSync> {
        Some(&self.sync)
    }
}

/// Distributed: waits until the follower has folded the config topic past the append, so the
/// caller reads its own write, in the log's order with every other replica's writes.
pub(super) struct Follower;

impl Consistency for Follower {
    fn committed<'a>(
        &'a self,
        _state: &'a RwLock<State>,
        _events: Vec<ConfigEvent>,
        mut folded: watch::Receiver<u64>,
        offset: Offset,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        async move {
            let wait = folded.wait_for(|at| *at > offset);
            match tokio::time::timeout(READ_BACK, wait).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(LedgerError::NotReadBack(READ_BACK)),
            }
        }
        .boxed()
    }

    fn claims_crossings(&self) -> bool {
        false
    }

    fn follows_log(&self) -> bool {
        true
    }

    fn sync(&self) -> Option<&StoreSync> {
        None
    }
}
