//! The event-sourced write side: every change of state goes through here. Admin commands append
//! config events ([`Ledger::command`], which holds the admin lock, so no caller can forget it);
//! the data plane admits requests against budgets and rate limits ([`Ledger::admit`]) and
//! appends usage events, settling them into budgets and emitting limit events
//! ([`Ledger::record_usage`]). State is the fold of the log: rebuilt by [`Ledger::replay`], kept
//! current by the appends themselves (embedded) or by following the log ([`Ledger::follow`],
//! distributed). Whether this process applies its own appends or reads them back is decided once,
//! when the ledger is built ([`Ledger::embedded`], [`Ledger::distributed`]).
//!
//! State is behind a read-write lock: requests take short read locks; the only writers are event
//! applications, which are brief and never await.

mod bootstrap;
mod consistency;
mod error;
pub mod governor;
pub mod replay;
pub mod sync;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::codec;
use crate::domain::budget::{BudgetRef, RequestPath};
use crate::domain::limits::UsageLimit;
use crate::domain::*;
use crate::log::{EventLog, Topic};
use crate::telemetry::Metrics;

use consistency::{Consistency, Follower, Local};
pub use error::LedgerError;
use governor::{Denial, Estimate, Governor, Reservation};
use sync::StoreSync;

/// The write side of one process.
pub struct Ledger {
    state: RwLock<State>,
    log: Arc<dyn EventLog>,
    governor: Arc<Governor>,
    /// Serialises admin commands so read-modify-write of an entity never races.
    admin: tokio::sync::Mutex<()>,
    /// How far each topic has been folded into `state` (by replay, then in distributed mode the
    /// follower; commits there wait on the config topic's).
    folded: [watch::Sender<u64>; 3],
    consistency: Box<dyn Consistency>,
    metrics: Arc<Metrics>,
    /// Work a request leaves running after its response (draining a stream whose client left,
    /// appending a limit event): serving threads wait for it before they stop.
    tasks: TaskTracker,
}

/// An admin command in progress: it holds the admin lock from [`Ledger::command`] until it is
/// committed or dropped, so the changes it commits were computed from the state they replace.
pub struct Command<'a> {
    ledger: &'a Ledger,
    _admin: tokio::sync::MutexGuard<'a, ()>,
}

impl Command<'_> {
    /// The state the command decides from (no other command changes it meanwhile).
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.ledger.state()
    }

    /// Appends the changes as one unit, then makes them visible here (read-your-writes); see
    /// `Ledger::commit`. Ends the command.
    pub async fn commit(
        self,
        actor: Option<Actor>,
        changes: Vec<Change>,
    ) -> Result<(), LedgerError> {
        self.ledger.commit(actor, changes).await
    }
}

impl Ledger {
    /// Embedded mode: this process is the only writer. Its appends apply as soon as they are
    /// durable, settling usage claims threshold and exhaustion events, and analytics wait for the
    /// store through `sync` (read-your-writes).
    pub fn embedded(log: Arc<dyn EventLog>, sync: Arc<StoreSync>, metrics: Arc<Metrics>) -> Self {
        Self::new(log, Box::new(Local { sync }), metrics)
    }

    /// Distributed mode: state follows the log ([`Ledger::follow`]), commits are read back from
    /// it, and the aggregators claim limit crossings from global totals.
    pub fn distributed(log: Arc<dyn EventLog>, metrics: Arc<Metrics>) -> Self {
        Self::new(log, Box::new(Follower), metrics)
    }

    fn new(
        log: Arc<dyn EventLog>,
        consistency: Box<dyn Consistency>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Ledger {
            state: RwLock::new(State::default()),
            log,
            governor: Arc::default(),
            admin: tokio::sync::Mutex::new(()),
            folded: Topic::ALL.map(|_| watch::channel(0).0),
            consistency,
            metrics,
            tasks: TaskTracker::new(),
        }
    }

    /// The current state, read-locked (hold it briefly, never across an await).
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// Starts an admin command: waits for the admin lock.
    pub async fn command(&self) -> Command<'_> {
        Command {
            ledger: self,
            _admin: self.admin.lock().await,
        }
    }

    /// The log this ledger appends to.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Work left running after responses; serving waits for it before stopping.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Appends config changes durably, then makes them visible (read-your-writes for the caller).
    ///
    /// The changes are one unit: they are appended as one batch ([`EventLog::append_batch`]), so
    /// a failure (a full disk, a broker refusing) leaves none of them, now or after a restart.
    ///
    /// Each event records `actor` (None: the system) and what it did to its entity, decided
    /// here from the state before (the audit trail).
    async fn commit(&self, actor: Option<Actor>, changes: Vec<Change>) -> Result<(), LedgerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let at = Millis::now();
        let events: Vec<ConfigEvent> = {
            let state = self.state.read();
            changes
                .into_iter()
                .map(|change| {
                    let (kind, id) = change.target();
                    let before = state.entity(kind, id);
                    ConfigEvent {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        at,
                        audit: Box::new(audit::audit_of(before.as_ref(), &change, actor.as_ref())),
                        change,
                    }
                })
                .collect()
        };
        let records = events
            .iter()
            .map(|e| Ok((e.key().into_bytes(), codec::encode_config(e)?)))
            .collect::<Result<Vec<_>, LedgerError>>()?;
        let offset = self.log.append_batch(Topic::Config, records).await?;
        self.metrics
            .config_events_appended
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let folded = self.folded[Topic::Config.index()].subscribe();
        self.consistency
            .committed(&self.state, events, folded, offset)
            .await
    }

    /// Checks every budget and rate limit on `path` and reserves the request's maximum.
    pub fn admit(
        &self,
        path: &RequestPath<'_>,
        est: Estimate,
        now: Millis,
    ) -> Result<Reservation, Denial> {
        self.governor.admit(&self.state, path, est, now)
    }

    /// Appends a usage event durably, then settles it: folds it into the totals and budgets and
    /// releases the attempt's reservation. If the append fails, dropping the reservation
    /// releases it.
    ///
    /// An `async` block rather than an `async fn`: an `async fn`'s future holds its arguments
    /// twice (as captured, and as the body's locals), and this future is inside every request's
    /// (the event alone is 400 bytes).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn's future would hold the event twice"
    )]
    pub fn record_usage(
        &self,
        event: UsageEvent,
        reservation: Option<Reservation>,
    ) -> impl Future<Output = Result<(), LedgerError>> + '_ {
        async move {
            let bytes = codec::encode_usage(&event)?;
            self.log
                .append(Topic::Usage, event.api_key_id.clone().into_bytes(), bytes)
                .await?;
            self.metrics
                .usage_events_appended
                .fetch_add(1, Ordering::Relaxed);
            let claims = self.consistency.claims_crossings();
            let due = self
                .governor
                .settle(&self.state, event, reservation, claims, Millis::now());
            for limit_event in due {
                self.emit_limit_event(limit_event);
            }
            Ok(())
        }
    }

    /// The aggregators: folds a budget window's global usage (`usage`, a limit event of kind
    /// usage) and claims the threshold and exhaustion events it makes due (marked emitted so
    /// nothing else claims them); appends them all and returns them.
    pub fn publish_usage(
        &self,
        usage: LimitEvent,
        budgets: &[(BudgetRef, UsageLimit)],
        path: &RequestPath<'_>,
        now: Millis,
    ) -> Vec<LimitEvent> {
        self.state.write().apply(&Event::Limit(usage.clone()));
        let crossings = governor::claim_crossings(&self.state, budgets, path, now);
        let all: Vec<LimitEvent> = std::iter::once(usage).chain(crossings).collect();
        for e in &all {
            self.emit_limit_event(e.clone());
        }
        all
    }

    /// Appends a limit event in the background, retrying until it is in the log: the state
    /// already counts it as emitted, so it is never emitted twice, and a request never waits on it.
    fn emit_limit_event(&self, event: LimitEvent) {
        let log = self.log.clone();
        self.tasks.spawn(async move {
            let bytes = match codec::encode_limit(&event) {
                Ok(b) => b,
                Err(e) => return tracing::error!(error = %e, "limit event could not be encoded"),
            };
            let key = event.budget.clone().into_bytes();
            let mut wait = std::time::Duration::from_millis(100);
            while let Err(e) = log.append(Topic::Limits, key.clone(), bytes.clone()).await {
                tracing::error!(error = %e, budget = %event.budget, "limit event append failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        });
    }

    /// Emits reset events for budgets whose period rolled over by `now`, and drops the rate
    /// counters of limits that no longer exist or whose interval ended.
    pub fn sweep(&self, now: Millis) {
        let due = {
            let mut state = self.state.write();
            let due = alerts::resets(&state, now);
            for e in &due {
                state.apply(&Event::Limit(e.clone()));
            }
            due
        };
        for e in due {
            self.emit_limit_event(e);
        }
        self.governor.prune(&self.state.read(), now);
    }

    /// Distributed gateways: replaces every entity's usage totals with the global ones.
    pub fn replace_usage_totals(
        &self,
        totals: impl IntoIterator<Item = (EntityKind, String, Totals)>,
    ) {
        self.state.write().replace_usage_totals(totals);
    }

    /// How many rate counters are held (a metric).
    pub fn rate_limiters(&self) -> usize {
        self.governor.limiters()
    }

    /// Embedded mode: waits (bounded) until the usage store has every event logged before the
    /// call, so analytics read the caller's own writes. Distributed: returns at once.
    pub async fn await_store(&self) {
        if let Some(sync) = self.consistency.sync() {
            sync.await_store(self.log.as_ref()).await;
        }
    }

    /// Embedded mode: waits (bounded) until the store's audit trail has every admin change
    /// logged before the call. Distributed: returns at once.
    pub async fn await_audit(&self) {
        if let Some(sync) = self.consistency.sync() {
            sync.await_audit(self.log.as_ref()).await;
        }
    }

    /// Waits (up to `within`) until the state holds every config event in the log now, other
    /// processes' included: a reader attributing usage to budgets (the aggregator) then knows
    /// every key and limit a gateway could have served it under. False when it did not in time
    /// (or the log's end could not be looked up).
    pub async fn config_caught_up(&self, within: std::time::Duration) -> bool {
        if !self.consistency.follows_log() {
            return true; // embedded: the only writer, its appends applied at once
        }
        let mut folded = self.folded[Topic::Config.index()].subscribe();
        let caught_up = async {
            let end = self.log.fetch_end(Topic::Config).await.ok()?;
            folded.wait_for(|at| *at >= end).await.ok().map(drop)
        };
        matches!(tokio::time::timeout(within, caught_up).await, Ok(Some(())))
    }

    /// How many bytes of the usage log the store has not ingested yet (embedded mode; in
    /// distributed mode the aggregators' consumer group has the lag: 0).
    pub async fn store_lag(&self) -> u64 {
        match self.consistency.sync() {
            Some(sync) => sync.lag(self.log.as_ref()).await,
            None => 0,
        }
    }

    /// Why this process should not get traffic now (empty when ready).
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut out = self.log.unavailable();
        if out.is_empty() && !self.log.accepts_usage() {
            out.push(
                "usage cannot be recorded: the event log is unreachable or its spool is full"
                    .into(),
            );
        }
        if let Some(sync) = self.consistency.sync() {
            out.extend(sync.reasons());
        }
        if self.state.read().organisation.is_none() {
            out.push("state is not rebuilt yet".into());
        }
        out
    }
}
