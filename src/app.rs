//! Wiring: opens the log and the store, rebuilds state by replaying the log, bootstraps the
//! organisation and its admin key, and runs the log consumer that feeds the usage store.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::codec::{self, CodecError};
use crate::crypto::{self, Sealer};
use crate::domain::audit;
use crate::domain::pricing::PriceTable;
use crate::domain::*;
use crate::log::file::FileLog;
use crate::log::{EventLog, LogError, Topic};
use crate::settings::Settings;
use crate::store::sqlite::SqliteStore;
use crate::store::{StoreError, UsageStore};
use crate::telemetry::Metrics;

/// Why the application could not start or commit.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Distributed mode: the change is in the config topic (it will apply everywhere) but this
    /// gateway has not read it back in time, so it cannot answer with the new state yet.
    #[error("the change was written to the config topic but not read back within {0:?}")]
    NotReadBack(std::time::Duration),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the usage record at byte {offset} of usage.log does not decode ({source}); stop the server and run `tollgate log salvage`")]
    Undecodable {
        offset: u64,
        #[source]
        source: CodecError,
    },
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("price table: {0}")]
    Prices(String),
    #[error("upstream client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(
        "the usage store {store} says {consumer} has read {topic}.log up to byte {at}, but {reason}: \
         the log lost data or was replaced. Nothing was changed. `tollgate log verify` shows where \
         things stand; `tollgate log salvage` moves the store's position back to what the log has \
         (or move the store file aside: it is rebuilt from the log)"
    )]
    StoreAhead {
        store: String,
        consumer: &'static str,
        topic: &'static str,
        at: u64,
        reason: String,
    },
}

/// The store consumer's name in `consumer_offsets`.
const STORE_CONSUMER: &str = crate::recovery::CONSUMERS[0].0;
/// The audit consumer's name (it follows the config log into the store's `audit_log`).
const AUDIT_CONSUMER: &str = crate::recovery::CONSUMERS[2].0;
/// How long an analytics query waits for the store to take in the usage logged before it.
pub const READ_YOUR_WRITES: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a distributed admin command waits to read its change back from the config topic.
/// Generous: it only runs out when Kafka or this process is badly starved, and the change is
/// already durable then.
const READ_BACK: std::time::Duration = std::time::Duration::from_secs(30);
/// The slug of the workspace every organisation starts with.
pub const DEFAULT_WORKSPACE_SLUG: &str = "ws-default";
/// The id of the bootstrap admin key record.
const BOOTSTRAP_KEY_ID: &str = "admin-bootstrap";

/// Everything the roles share. State is behind a read-write lock: requests take short read
/// locks; the only writers are event applications, which are brief and never await.
pub struct Core {
    pub state: RwLock<State>,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn UsageStore>,
    pub sealer: Sealer,
    pub prices: PriceTable,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Provider calls (see [`crate::proxy::client`]).
    pub http: reqwest::Client,
    /// Alert webhook calls.
    pub webhook_http: reqwest::Client,
    /// Budgets' reservations and rate limiters.
    pub governor: Arc<crate::proxy::govern::Governor>,
    /// Serialises admin commands so read-modify-write of an entity never races.
    pub admin_lock: tokio::sync::Mutex<()>,
    pub mode: Mode,
    /// Work a request leaves running after its response (draining a stream whose client left,
    /// appending a limit event): serving threads wait for it before they stop.
    pub tasks: TaskTracker,
    /// How far each topic has been folded into `state` (by replay, then in distributed mode the
    /// follower; commits there wait on the config topic's).
    folded: [watch::Sender<u64>; 3],
    /// Embedded mode: how far the store has ingested the usage log (published by the sink).
    stored: watch::Sender<u64>,
    /// The store sink's thread, which a waiting reader raises from the background at once.
    sink_thread: crate::store::Hurry,
    /// The furthest usage-log position a reader waits for the store to reach: the sink skips its
    /// batching window while it is ahead of the sink.
    wanted: watch::Sender<u64>,
    /// Why the store sink is not keeping up (a failing store, an undecodable record), for readiness.
    sink_error: parking_lot::Mutex<Option<String>>,
    /// Embedded mode: how far the store has taken the config log into its audit trail.
    audited: watch::Sender<u64>,
    /// Why the audit sink is not keeping up, for readiness.
    audit_error: parking_lot::Mutex<Option<String>>,
}

/// How a process runs its roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `tollgate serve`: one process, local log and store. Admin changes apply as they are
    /// appended; settling usage emits threshold and exhaustion events.
    Embedded,
    /// Kafka and ClickHouse: state follows the log (commits are read back from it) and the
    /// aggregators emit limit events from global totals.
    Distributed,
}

/// The topics a process folds into its state: all of them in embedded mode; config and limit
/// state in distributed mode (usage reaches gateways as limit state from the aggregators).
const DISTRIBUTED_TOPICS: [Topic; 2] = [Topic::Config, Topic::Limits];

/// What starting produced besides the core: an admin key generated on first start (shown once).
pub struct Started {
    pub core: Arc<Core>,
    pub generated_admin_key: Option<String>,
}

impl Core {
    /// Opens the embedded backends in the data dir and rebuilds state.
    pub async fn open(settings: Settings) -> Result<Started, AppError> {
        let dir = settings.data_dir.clone();
        crate::files::private_dir(&dir).map_err(|source| AppError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let sealer = master_key(&settings, &dir)?;
        let log: Arc<dyn EventLog> =
            Arc::new(FileLog::open(&dir.join("log"), settings.usage_fsync)?);
        let store_path = dir.join("usage.sqlite");
        let store: Arc<dyn UsageStore> = Arc::new(SqliteStore::open(&store_path)?);
        let core = Self::assemble(settings, sealer, log, store, Mode::Embedded)?;
        core.check_store_positions(&store_path).await?;
        core.replay(&Topic::ALL).await?;
        let generated_admin_key = core.bootstrap().await?;
        Ok(Started {
            core,
            generated_admin_key,
        })
    }

    /// Connects to Kafka and ClickHouse and rebuilds state from the config and limit topics.
    /// `bootstrap`: make sure the organisation and admin key exist (gateways do).
    pub async fn open_distributed(
        settings: Settings,
        kafka: crate::log::kafka::KafkaLog,
        clickhouse: crate::store::clickhouse::ClickhouseStore,
        bootstrap: bool,
    ) -> Result<Started, AppError> {
        let key = settings.master_key.as_deref().ok_or_else(|| {
            AppError::MasterKey(
                "TOLLGATE_MASTER_KEY must be set in distributed mode (every role shares it)".into(),
            )
        })?;
        let sealer = Sealer::from_base64(key).map_err(|e| AppError::MasterKey(e.to_string()))?;
        crate::files::private_dir(&settings.data_dir).map_err(|source| AppError::DataDir {
            path: settings.data_dir.display().to_string(),
            source,
        })?;
        let core = Self::assemble(
            settings,
            sealer,
            Arc::new(kafka),
            Arc::new(clickhouse),
            Mode::Distributed,
        )?;
        core.replay(&DISTRIBUTED_TOPICS).await?;
        tokio::spawn(run_follower(core.clone()));
        let generated_admin_key = if bootstrap {
            core.bootstrap().await?
        } else {
            None
        };
        Ok(Started {
            core,
            generated_admin_key,
        })
    }

    fn assemble(
        settings: Settings,
        sealer: Sealer,
        log: Arc<dyn EventLog>,
        store: Arc<dyn UsageStore>,
        mode: Mode,
    ) -> Result<Arc<Core>, AppError> {
        let http = crate::proxy::client::upstream(&settings)?;
        // Alert webhooks are the operator's own URLs: `upstream_private_hosts` is not for them.
        let webhook_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Arc::new(Core {
            state: RwLock::new(State::default()),
            log,
            store,
            sealer,
            prices: PriceTable::shipped().map_err(AppError::Prices)?,
            metrics: Metrics::default(),
            settings,
            http,
            webhook_http,
            governor: Arc::default(),
            admin_lock: tokio::sync::Mutex::new(()),
            mode,
            tasks: TaskTracker::new(),
            folded: Topic::ALL.map(|_| watch::channel(0).0),
            stored: watch::channel(0).0,
            wanted: watch::channel(0).0,
            sink_thread: crate::store::Hurry::default(),
            sink_error: parking_lot::Mutex::new(None),
            audited: watch::channel(0).0,
            audit_error: parking_lot::Mutex::new(None),
        }))
    }

    /// Embedded mode, at start: each store consumer's position must be a position of its topic's
    /// log (at or before the end, on a frame). A store ahead of the log would otherwise wait
    /// forever for events that will never come, or read from the middle of a frame.
    async fn check_store_positions(&self, store_path: &Path) -> Result<(), AppError> {
        for (consumer, topic) in crate::recovery::CONSUMERS {
            let mut at = self.store.offset(consumer).await?;
            let end = *self.log.watch_end(topic).borrow();
            if at > end && topic == Topic::Config {
                // The audit trail keeps its rows of changes the log no longer has (a cut tail):
                // they were made. It reads on from the log's end, so no later change is skipped.
                tracing::warn!(
                    at,
                    end,
                    "audit trail: ahead of the config log (the log lost its tail); it keeps what it has and reads on from the log's end"
                );
                self.store.record_audit(Vec::new(), consumer, end).await?;
                at = end;
            }
            let reason = if at > end {
                format!("the log ends at byte {end}")
            } else if at < end && self.log.read(topic, at, 1).await.is_err() {
                format!("no frame of the log starts there (the log ends at byte {end})")
            } else {
                match topic {
                    Topic::Usage => self.stored.send_replace(at),
                    Topic::Config => self.audited.send_replace(at),
                    Topic::Limits => at,
                };
                continue;
            };
            return Err(AppError::StoreAhead {
                store: store_path.display().to_string(),
                consumer,
                topic: topic.name(),
                at,
                reason,
            });
        }
        Ok(())
    }

    /// Embedded mode: waits (up to [`READ_YOUR_WRITES`]) until the store has ingested the usage
    /// log up to its end as it is now, so a query sees every request answered before it. The
    /// sink is told, so it does not sit in its batching window meanwhile.
    pub async fn await_store(&self) {
        if self.mode != Mode::Embedded {
            return;
        }
        let target = *self.log.watch_end(Topic::Usage).borrow();
        let mut stored = self.stored.subscribe();
        if *stored.borrow_and_update() >= target {
            return;
        }
        self.wanted.send_if_modified(|w| {
            let ahead = target > *w;
            *w = (*w).max(target);
            ahead
        });
        self.sink_thread.now();
        self.store.hurry();
        let caught_up = stored.wait_for(|at| *at >= target);
        if tokio::time::timeout(READ_YOUR_WRITES, caught_up)
            .await
            .is_err()
        {
            tracing::warn!(
                target,
                stored = *self.stored.borrow(),
                "analytics: the usage store did not catch up within {READ_YOUR_WRITES:?}; answering with what it has"
            );
        }
    }

    /// Embedded mode: waits (up to [`READ_YOUR_WRITES`]) until the store's audit trail has taken
    /// in the config log up to its end as it is now, so an admin reads the changes just made.
    pub async fn await_audit(&self) {
        if self.mode != Mode::Embedded {
            return;
        }
        let target = *self.log.watch_end(Topic::Config).borrow();
        let mut audited = self.audited.subscribe();
        if *audited.borrow_and_update() < target {
            self.store.hurry();
        }
        let caught_up = audited.wait_for(|at| *at >= target);
        if tokio::time::timeout(READ_YOUR_WRITES, caught_up)
            .await
            .is_err()
        {
            tracing::warn!(
                target,
                audited = *self.audited.borrow(),
                "audit logs: the store did not catch up within {READ_YOUR_WRITES:?}; answering with what it has"
            );
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
        out.extend(self.sink_error.lock().clone());
        out.extend(self.audit_error.lock().clone());
        if self.state.read().organisation.is_none() {
            out.push("state is not rebuilt yet".into());
        }
        out
    }

    /// Reads the events of a topic from `at`; returns them and the offset after them.
    async fn read_events(&self, topic: Topic, at: u64) -> Result<(Vec<Event>, u64), AppError> {
        let batch = self.log.read(topic, at, 4 << 20).await?;
        let next = batch.last().map_or(at, |r| r.next);
        let mut events = Vec::with_capacity(batch.len());
        for r in &batch {
            events.push(match topic {
                Topic::Config => Event::Config(codec::decode_config(&r.payload)?),
                Topic::Usage => Event::Usage(codec::decode_usage(&r.payload)?),
                Topic::Limits => Event::Limit(codec::decode_limit(&r.payload)?),
            });
        }
        Ok((events, next))
    }

    /// Folds the topics' whole logs into state, in the order given (config first).
    async fn replay(&self, topics: &[Topic]) -> Result<(), AppError> {
        let mut state = State::default();
        for &topic in topics {
            let mut at = 0;
            loop {
                let (events, next) = self.read_events(topic, at).await?;
                if events.is_empty() {
                    break;
                }
                at = next;
                for e in &events {
                    state.apply(e);
                }
            }
            self.folded[topic.index()].send_replace(at);
        }
        tracing::info!(
            workspaces = state.workspaces.len(),
            api_keys = state.api_keys.len(),
            usage_ids_remembered = state.usage_ids_remembered(),
            "state rebuilt from the log"
        );
        *self.state.write() = state;
        Ok(())
    }

    /// Makes sure the organisation, its default workspace and the admin key exist.
    async fn bootstrap(&self) -> Result<Option<String>, AppError> {
        let now = Millis::now();
        let mut changes = Vec::new();
        let (has_org, has_default_ws, bootstrap_key) = {
            let s = self.state.read();
            (
                s.organisation.is_some(),
                s.workspace(DEFAULT_WORKSPACE_SLUG).is_some(),
                s.api_keys.get(BOOTSTRAP_KEY_ID).cloned(),
            )
        };
        if !has_org {
            // Ids of bootstrap entities are fixed, so replicas starting at once create one each.
            changes.push(Change::Upsert(Entity::Organisation(Organisation {
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"tollgate:organisation")
                    .to_string(),
                name: "default".into(),
                created_at: now,
            })));
        }
        if !has_default_ws {
            changes.push(Change::Upsert(Entity::Workspace(Workspace {
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"tollgate:ws-default")
                    .to_string(),
                slug: DEFAULT_WORKSPACE_SLUG.into(),
                name: "Default".into(),
                description: Some("The organisation's default workspace".into()),
                defaults: Default::default(),
                usage_limits: None,
                rate_limits: vec![],
                created_at: now,
                updated_at: now,
            })));
        }
        let mut generated = None;
        let wanted_hash = self.settings.admin_key.as_deref().map(crypto::hash_api_key);
        let key = match (&bootstrap_key, wanted_hash) {
            (Some(k), Some(h)) if crypto::hashes_equal(&k.key_hash, &h) => None,
            (Some(_), None) => None,
            (_, Some(h)) => Some((
                h,
                self.settings
                    .admin_key
                    .as_deref()
                    .map(crypto::mask)
                    .unwrap_or_default(),
            )),
            (None, None) => {
                let secret = crypto::new_api_key();
                let out = (crypto::hash_api_key(&secret), crypto::mask(&secret));
                generated = Some(secret);
                Some(out)
            }
        };
        if key.is_none() {
            changes.extend(
                bootstrap_key
                    .as_ref()
                    .and_then(|k| with_audit_scope(k, now)),
            );
        }
        if let Some((key_hash, masked)) = key {
            changes.push(Change::Upsert(Entity::ApiKey(ApiKey {
                id: BOOTSTRAP_KEY_ID.into(),
                key_hash,
                masked,
                name: "Bootstrap admin key".into(),
                description: Some("Created at first start (TOLLGATE_ADMIN_KEY)".into()),
                kind: ApiKeyType::OrganisationService,
                workspace_id: None,
                user_id: None,
                scopes: crate::control::api_keys::ADMIN_SCOPES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                defaults: Default::default(),
                usage_limits: None,
                rate_limits: vec![],
                limits_set_by: crate::domain::Authority::Organisation,
                alert_emails: vec![],
                rotation_policy: None,
                expires_at: None,
                creation_mode: "auto".into(),
                created_by: None,
                ancestors: Vec::new(),
                created_at: bootstrap_key.as_ref().map_or(now, |k| k.created_at),
                updated_at: now,
            })));
        }
        if !changes.is_empty() {
            self.commit(None, changes).await?;
        }
        Ok(generated)
    }

    /// Appends config changes durably, then applies them (read-your-writes for the caller).
    /// Callers hold `admin_lock` so the changes were computed from the state they replace.
    ///
    /// The changes are one unit: they are appended as one batch ([`EventLog::append_batch`]) and
    /// applied only after the whole batch is durable, so a failure (a full disk) leaves none of
    /// them applied, now or after a restart (on Kafka the batch is one record).
    ///
    /// Each event records `actor` (None: the system) and what it did to its entity, decided
    /// here from the state before (the audit trail).
    pub async fn commit(&self, actor: Option<Actor>, changes: Vec<Change>) -> Result<(), AppError> {
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
            .collect::<Result<Vec<_>, AppError>>()?;
        let offset = self.log.append_batch(Topic::Config, records).await?;
        self.metrics
            .config_events_appended
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        match self.mode {
            Mode::Embedded => {
                let mut state = self.state.write();
                for event in events {
                    state.apply(&Event::Config(event));
                }
            }
            Mode::Distributed => {
                Self::await_folded(self.folded[Topic::Config.index()].subscribe(), offset).await?
            }
        }
        Ok(())
    }

    /// Distributed mode: waits until the follower has folded the config topic past `offset`, so
    /// the caller reads its own write, in the log's order with every other replica's writes.
    async fn await_folded(mut progress: watch::Receiver<u64>, offset: u64) -> Result<(), AppError> {
        let wait = progress.wait_for(|folded| *folded > offset);
        match tokio::time::timeout(READ_BACK, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(AppError::NotReadBack(READ_BACK)),
        }
    }

    /// Appends a usage event durably, then settles it: folds it into the totals and budgets and
    /// releases the attempt's reservation. If the append fails, dropping the reservation
    /// releases it.
    pub async fn record_usage(
        &self,
        event: UsageEvent,
        reservation: Option<crate::proxy::govern::Reservation>,
    ) -> Result<(), AppError> {
        let bytes = codec::encode_usage(&event)?;
        self.log
            .append(Topic::Usage, event.api_key_id.clone().into_bytes(), bytes)
            .await?;
        self.metrics
            .usage_events_appended
            .fetch_add(1, Ordering::Relaxed);
        let crossings = self.mode == Mode::Embedded;
        for limit_event in self
            .governor
            .settle(&self.state, event, reservation, crossings)
        {
            self.emit_limit_event(limit_event);
        }
        Ok(())
    }

    /// Appends a limit event in the background, retrying until it is in the log: the state
    /// already counts it as emitted, so it is never emitted twice, and a request never waits on it.
    pub fn emit_limit_event(&self, event: LimitEvent) {
        let log = self.log.clone();
        self.tasks.spawn(async move {
            let bytes = match codec::encode_limit(&event) {
                Ok(b) => b,
                Err(e) => return tracing::error!(error = %e, "limit event could not be encoded"),
            };
            let mut wait = std::time::Duration::from_millis(100);
            while let Err(e) = log
                .append(
                    Topic::Limits,
                    event.budget.clone().into_bytes(),
                    bytes.clone(),
                )
                .await
            {
                tracing::error!(error = %e, budget = %event.budget, "limit event append failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        });
    }

    /// How many bytes of the usage log the store has not ingested yet.
    /// (Embedded mode; in distributed mode the aggregators' consumer group has the lag.)
    pub async fn store_lag(&self) -> u64 {
        if self.mode == Mode::Distributed {
            return 0;
        }
        let end = *self.log.watch_end(Topic::Usage).borrow();
        let done = self.store.offset(STORE_CONSUMER).await.unwrap_or(0);
        end.saturating_sub(done)
    }
}

/// A bootstrap key from before the audit trail still holding every other admin scope gets
/// `audit_logs.list` too; a key narrowed on purpose is left as it is.
fn with_audit_scope(k: &ApiKey, now: Millis) -> Option<Change> {
    let scope = crate::control::audit_logs::SCOPE;
    let holds = |s: &str| k.scopes.iter().any(|h| h == s);
    let others = crate::control::api_keys::ADMIN_SCOPES
        .iter()
        .filter(|s| **s != scope);
    if holds(scope) || !others.into_iter().all(|s| holds(s)) {
        return None;
    }
    let mut k = k.clone();
    k.scopes.push(scope.to_owned());
    k.updated_at = now;
    Some(Change::Upsert(Entity::ApiKey(k)))
}

/// Distributed mode: keeps folding the config and limit events every process appends (this one
/// included), in the log's order, so an admin change made on any replica, and the aggregators'
/// limit state, reach this one. Runs for the life of the process.
async fn run_follower(core: Arc<Core>) {
    let mut ends = DISTRIBUTED_TOPICS.map(|t| core.log.watch_end(t));
    loop {
        let mut progressed = false;
        for (topic, end) in DISTRIBUTED_TOPICS.iter().zip(ends.iter_mut()) {
            let at = *core.folded[topic.index()].borrow();
            if at >= *end.borrow_and_update() {
                continue;
            }
            match core.read_events(*topic, at).await {
                Ok((events, next)) => {
                    let mut state = core.state.write();
                    for e in &events {
                        state.apply(e);
                    }
                    drop(state);
                    core.folded[topic.index()].send_replace(next);
                    // A read may come back short, even empty, before the end (a Kafka poll that
                    // timed out): still behind means read again, not wait for the end to move,
                    // which it may not do until the next change anywhere.
                    progressed |= !events.is_empty() || next < *end.borrow();
                }
                Err(e) => {
                    tracing::error!(error = %e, topic = topic.name(), "follower: read failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        if !progressed {
            let [config, limits] = &mut ends;
            let changed = tokio::select! {
                r = config.changed() => r,
                r = limits.changed() => r,
            };
            if changed.is_err() {
                return; // the log is gone: the process is ending
            }
        }
    }
}

/// How often a distributed gateway refreshes entity usage totals from ClickHouse.
const TOTALS_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// How often it re-reads all of history rather than only the days since the cutoff, to take in
/// events that reached ClickHouse late for older days (a gateway's spool drained after an outage).
const TOTALS_FULL_REFRESH: std::time::Duration = std::time::Duration::from_secs(600);

/// Distributed gateways: keeps each entity's `current_usage` totals global by reading them from
/// ClickHouse every [`TOTALS_REFRESH`] (a gateway only settles its own requests). Each read covers
/// only events since the start of yesterday (UTC), added to the totals before that, which are
/// re-read every [`TOTALS_FULL_REFRESH`]: the cost of a refresh follows the recent event rate,
/// not the size of the history.
pub async fn run_totals_refresh(
    core: Arc<Core>,
    store: crate::store::clickhouse::ClickhouseStore,
    mut shutdown: watch::Receiver<bool>,
) {
    type Map = std::collections::HashMap<(EntityKind, String), Totals>;
    let mut older: Option<(i64, Map, std::time::Instant)> = None;
    loop {
        if older
            .as_ref()
            .is_none_or(|(_, _, at)| at.elapsed() >= TOTALS_FULL_REFRESH)
        {
            let cutoff = Millis::now().floor_day().0 - 86_400_000;
            match store.entity_totals(i64::MIN, cutoff).await {
                Ok(t) => {
                    let map = t.into_iter().map(|(k, id, t)| ((k, id), t)).collect();
                    older = Some((cutoff, map, std::time::Instant::now()));
                }
                Err(e) => tracing::debug!(error = %e, "usage totals not refreshed"),
            }
        }
        if let Some((cutoff, base, _)) = &older {
            match store.entity_totals(*cutoff, i64::MAX).await {
                Ok(recent) => {
                    let mut all = base.clone();
                    for (k, id, t) in recent {
                        all.entry((k, id)).or_default().merge(t);
                    }
                    core.state
                        .write()
                        .replace_usage_totals(all.into_iter().map(|((k, id), t)| (k, id, t)));
                }
                Err(e) => tracing::debug!(error = %e, "usage totals not refreshed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TOTALS_REFRESH) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reads the master key from the settings, or from `<data dir>/master.key`, generating that
/// file (mode 0600) on first start.
fn master_key(settings: &Settings, dir: &Path) -> Result<Sealer, AppError> {
    if let Some(k) = &settings.master_key {
        return Sealer::from_base64(k).map_err(|e| AppError::MasterKey(e.to_string()));
    }
    let path = dir.join("master.key");
    let io = |source| AppError::DataDir {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&path).map_err(io)?;
        f.write_all(Sealer::generate_key().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        tracing::warn!(
            path = %path.display(),
            "generated a master key for provider credentials; back it up, or set TOLLGATE_MASTER_KEY"
        );
    }
    crate::files::narrow(&path, 0o600).map_err(io)?;
    let text = std::fs::read_to_string(&path).map_err(io)?;
    Sealer::from_base64(&text).map_err(|e| AppError::MasterKey(format!("{}: {e}", path.display())))
}

/// How long the store sink lets events accumulate after a wake-up, so it commits one transaction
/// per many events rather than one per request (the commit, not the rows, is what costs).
const SINK_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// Every 30 seconds: emits reset events for budgets whose period rolled over, and drops the rate
/// limiters of limits that no longer exist.
pub async fn run_reset_sweep(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            _ = shutdown.changed() => return,
        }
        let due = {
            let mut state = core.state.write();
            let due = crate::domain::alerts::resets(&state, Millis::now());
            for e in &due {
                state.apply(&Event::Limit(e.clone()));
            }
            due
        };
        for e in due {
            core.emit_limit_event(e);
        }
        core.governor.prune(&core.state.read());
    }
}

/// Starts [`run_store_sink`] on a thread of its own at background priority, with its own
/// single-threaded runtime, so reading and decoding batches never holds up a request-path worker;
/// and [`run_audit_sink`] on another at normal priority: admin changes are rare, and a trail that
/// starved behind busy cores would answer an audit query without the change just made.
/// The returned future resolves when both have stopped (after `shutdown`, once caught up).
pub fn spawn_store_sink(
    core: Arc<Core>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let usage = sink_thread("store-sink", true, {
        let (core, shutdown) = (core.clone(), shutdown.clone());
        move || async move {
            let hurry = core.sink_thread.clone();
            hurry.enter();
            run_store_sink(core, shutdown).await;
            hurry.leave();
        }
    })?;
    let audit = sink_thread("audit-sink", false, move || run_audit_sink(core, shutdown))?;
    Ok(async move {
        let _ = tokio::join!(usage, audit);
    })
}

/// Runs `sink` on a thread of its own with a single-threaded runtime (at background priority when
/// `background`); the receiver completes when it has returned.
fn sink_thread<F, Fut>(
    name: &str,
    background: bool,
    sink: F,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time();
    if background {
        builder.on_thread_start(crate::store::background_priority);
    }
    let runtime = builder.build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if background {
                crate::store::background_priority();
            }
            runtime.block_on(sink());
            drop(done);
        })?;
    Ok(stopped)
}

/// The embedded aggregator: tails the usage log into the usage store.
///
/// Delivery order: read a batch from the log, write its rows *and* the new offset in one store
/// transaction, then continue. A crash before the commit replays the batch, and the store drops
/// the events it already has (idempotent on `event_id`), so the store ends up with each event
/// exactly once.
async fn run_store_sink(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    let mut end = core.log.watch_end(Topic::Usage);
    let mut at = match core.store.offset(STORE_CONSUMER).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "store sink: cannot read its offset; not running");
            return;
        }
    };
    core.stored.send_replace(at);
    let mut wanted = core.wanted.subscribe();
    loop {
        if at >= *end.borrow_and_update() {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                r = end.changed() => if r.is_err() { return },
                r = shutdown.changed() => if r.is_err() { return },
            }
            // The batching window, unless (or until) a reader waits for events past `at`.
            if *wanted.borrow_and_update() <= at {
                tokio::select! {
                    _ = tokio::time::sleep(SINK_BATCH_WINDOW) => {}
                    _ = wanted.wait_for(|w| *w > at) => {}
                }
            }
            continue;
        }
        // Work a reader waits for runs at normal priority, the rest in the background.
        let waited_for = *wanted.borrow() > at;
        crate::store::Priority::apply(if waited_for {
            crate::store::Priority::Normal
        } else {
            crate::store::Priority::Background
        });
        match sink_batch(&core, at).await {
            Ok(next) => {
                at = next;
                core.stored.send_replace(at);
                core.sink_error.lock().take();
            }
            Err(e) => {
                failed_batch(&core, "usage store", &core.sink_error, &e, &mut shutdown).await;
                if *shutdown.borrow() && sink_batch(&core, at).await.is_err() {
                    return; // stopping: the log keeps the events for the next start
                }
            }
        }
    }
}

/// The embedded audit trail: follows the config log into the store's `audit_log`, each batch's
/// rows and the new position in one store transaction (a replay finds its rows by event id), so
/// the trail holds every admin change once, whatever becomes of the log. Config events are rare:
/// no batching window, a change is in the trail as soon as the store takes it.
async fn run_audit_sink(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    let mut end = core.log.watch_end(Topic::Config);
    let mut at = match core.store.offset(AUDIT_CONSUMER).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "audit sink: cannot read its offset; not running");
            return;
        }
    };
    core.audited.send_replace(at);
    loop {
        if at >= *end.borrow_and_update() {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                r = end.changed() => if r.is_err() { return },
                r = shutdown.changed() => if r.is_err() { return },
            }
            continue;
        }
        match audit_batch(&core, at).await {
            Ok(next) => {
                at = next;
                core.audited.send_replace(at);
                core.audit_error.lock().take();
            }
            Err(e) => {
                failed_batch(&core, "audit trail", &core.audit_error, &e, &mut shutdown).await;
                if *shutdown.borrow() && audit_batch(&core, at).await.is_err() {
                    return; // stopping: the log keeps the events for the next start
                }
            }
        }
    }
}

/// A sink's batch failed. Nothing is skipped: the batch is retried until it goes in (a full disk
/// frees up), and meanwhile readiness says why (`reason`), the metric counts it and the log
/// says it. Waits [`SINK_RETRY`], or less when the process is stopping.
async fn failed_batch(
    core: &Core,
    what: &str,
    reason: &parking_lot::Mutex<Option<String>>,
    e: &AppError,
    shutdown: &mut watch::Receiver<bool>,
) {
    tracing::error!(error = %e, sink = what, "store sink: batch failed; retrying");
    core.metrics
        .store_sink_errors
        .fetch_add(1, Ordering::Relaxed);
    *reason.lock() = Some(format!("{what}: {e}"));
    tokio::select! {
        _ = tokio::time::sleep(SINK_RETRY) => {}
        _ = shutdown.changed() => {}
    }
}

async fn audit_batch(core: &Core, at: u64) -> Result<u64, AppError> {
    let (events, next) = core.read_events(Topic::Config, at).await?;
    let rows = events
        .iter()
        .filter_map(|e| match e {
            Event::Config(c) => Some(AuditEntry::of(c)),
            _ => None,
        })
        .collect();
    core.store.record_audit(rows, AUDIT_CONSUMER, next).await?;
    Ok(next)
}

/// How long the sink waits before retrying a batch that failed.
const SINK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

async fn sink_batch(core: &Core, at: u64) -> Result<u64, AppError> {
    let batch = core.log.read(Topic::Usage, at, 4 << 20).await?;
    let Some(next) = batch.last().map(|r| r.next) else {
        return Ok(at);
    };
    let mut events = Vec::with_capacity(batch.len());
    for r in &batch {
        // An undecodable record is never skipped: the sink stops before it, readiness reports
        // it, and `tollgate log salvage` (server stopped) is the way past it.
        events.push(
            codec::decode_usage(&r.payload).map_err(|e| AppError::Undecodable {
                offset: r.offset,
                source: e,
            })?,
        );
    }
    let new = core.store.ingest(events, STORE_CONSUMER, next).await?;
    core.metrics
        .usage_events_stored
        .fetch_add(new as u64, Ordering::Relaxed);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api_keys::ADMIN_SCOPES;

    fn key(scopes: &[&str]) -> ApiKey {
        ApiKey {
            id: BOOTSTRAP_KEY_ID.into(),
            key_hash: "h".into(),
            masked: "m".into(),
            name: "renamed by the admin".into(),
            description: None,
            kind: ApiKeyType::OrganisationService,
            workspace_id: None,
            user_id: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            defaults: Default::default(),
            usage_limits: None,
            rate_limits: vec![],
            limits_set_by: Authority::Organisation,
            alert_emails: vec![],
            rotation_policy: None,
            expires_at: None,
            creation_mode: "auto".into(),
            created_by: None,
            ancestors: Vec::new(),
            created_at: Millis(1),
            updated_at: Millis(1),
        }
    }

    #[test]
    fn an_older_full_bootstrap_key_gets_the_audit_scope_and_keeps_the_rest() {
        let older: Vec<&str> = ADMIN_SCOPES
            .iter()
            .copied()
            .filter(|s| *s != crate::control::audit_logs::SCOPE)
            .collect();
        let Some(Change::Upsert(Entity::ApiKey(k))) = with_audit_scope(&key(&older), Millis(9))
        else {
            panic!("the scope is added");
        };
        assert!(k.has_scope(crate::control::audit_logs::SCOPE));
        assert_eq!(k.name, "renamed by the admin");
        assert_eq!(k.scopes.len(), ADMIN_SCOPES.len());
        assert!(with_audit_scope(&key(ADMIN_SCOPES), Millis(9)).is_none());
        assert!(
            with_audit_scope(&key(&older[1..]), Millis(9)).is_none(),
            "a narrowed key is left as it is"
        );
    }

    /// A log whose every other read comes back empty, as a Kafka poll that timed out does.
    struct ShortReads {
        inner: FileLog,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl EventLog for ShortReads {
        fn append(
            &self,
            topic: Topic,
            key: Vec<u8>,
            payload: Vec<u8>,
        ) -> futures_util::future::BoxFuture<'static, Result<u64, LogError>> {
            self.inner.append(topic, key, payload)
        }
        fn append_batch(
            &self,
            topic: Topic,
            records: Vec<(Vec<u8>, Vec<u8>)>,
        ) -> futures_util::future::BoxFuture<'static, Result<u64, LogError>> {
            self.inner.append_batch(topic, records)
        }
        fn read(
            &self,
            topic: Topic,
            from: u64,
            max_bytes: usize,
        ) -> futures_util::future::BoxFuture<'static, Result<Vec<crate::log::Record>, LogError>>
        {
            if self.reads.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                return Box::pin(async { Ok(Vec::new()) });
            }
            self.inner.read(topic, from, max_bytes)
        }
        fn watch_end(&self, topic: Topic) -> watch::Receiver<u64> {
            self.inner.watch_end(topic)
        }
    }

    #[tokio::test]
    async fn a_short_read_does_not_stall_the_follower() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings
            .set("data_dir", dir.path().to_str().unwrap())
            .unwrap();
        let log = ShortReads {
            inner: FileLog::open(&dir.path().join("log"), settings.usage_fsync).unwrap(),
            reads: Default::default(),
        };
        let store = SqliteStore::open(&dir.path().join("usage.sqlite")).unwrap();
        let core = Core::assemble(
            settings,
            Sealer::from_base64(&Sealer::generate_key()).unwrap(),
            Arc::new(log),
            Arc::new(store),
            Mode::Distributed,
        )
        .unwrap();
        tokio::spawn(run_follower(core.clone()));
        for i in 0..3 {
            let mut k = key(ADMIN_SCOPES);
            k.id = format!("k{i}");
            let commit = core.commit(None, vec![Change::Upsert(Entity::ApiKey(k))]);
            tokio::time::timeout(std::time::Duration::from_secs(10), commit)
                .await
                .expect("the change is read back although a read came back empty")
                .unwrap();
        }
        assert_eq!(core.state.read().api_keys.len(), 3);
    }
}
