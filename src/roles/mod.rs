//! The roles a process runs, and the background loops they own, one file each: [`serve`]
//! (embedded: every role in one process), [`gateway`] (distributed data and control planes, with
//! its totals refresh), [`aggregator`] (usage into the store: the Kafka consumer group into
//! ClickHouse, and the embedded sinks), [`notifier`] (alert emails and webhooks) and [`sweep`]
//! (budget resets and rate-counter pruning).
//!
//! A [`Node`] is what a role's process opened: settings, the ledger on its log, the usage store
//! and the shared clients. Roles read it directly; the planes get their own contexts from it.

pub mod aggregator;
pub mod gateway;
pub mod notifier;
pub mod serve;
pub mod sweep;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::crypto::Sealer;
use crate::domain::pricing::PriceTable;
use crate::http::AppState;
use crate::ledger::sync::StoreSync;
use crate::ledger::{Ledger, LedgerError};
use crate::log::{EventLog, LogError};
use crate::settings::Settings;
use crate::store::{StoreError, UsageStore};
use crate::telemetry::Metrics;

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("master key ({from}): {source}")]
    MasterKey {
        /// Where the key came from: the setting, or the key file's path.
        from: String,
        #[source]
        source: crate::crypto::CryptoError,
    },
    #[error("TOLLGATE_MASTER_KEY must be set in distributed mode (every role shares it)")]
    NoMasterKey,
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
    #[error("{0}")]
    Io(#[from] std::io::Error),
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

/// What a process opened for its roles.
pub struct Node {
    settings: Arc<Settings>,
    ledger: Arc<Ledger>,
    log: Arc<dyn EventLog>,
    store: Arc<dyn UsageStore>,
    sealer: Sealer,
    metrics: Arc<Metrics>,
    /// Embedded mode: the sinks' progress (read-your-writes).
    sync: Option<Arc<StoreSync>>,
    /// Alert webhook calls (the operator's own URLs: `upstream_private_hosts` is not for them).
    webhook_http: reqwest::Client,
    /// An admin key generated on first start (shown once).
    generated_admin_key: Option<String>,
}

impl Node {
    fn new(
        settings: Settings,
        sealer: Sealer,
        log: Arc<dyn EventLog>,
        store: Arc<dyn UsageStore>,
        sync: Option<Arc<StoreSync>>,
    ) -> Result<Node, StartError> {
        let metrics = Arc::new(Metrics::default());
        let ledger = Arc::new(match &sync {
            Some(sync) => Ledger::embedded(log.clone(), sync.clone(), metrics.clone()),
            None => Ledger::distributed(log.clone(), metrics.clone()),
        });
        let webhook_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Node {
            settings: Arc::new(settings),
            ledger,
            log,
            store,
            sealer,
            metrics,
            sync,
            webhook_http,
            generated_admin_key: None,
        })
    }

    /// Makes sure the organisation and the admin key exist (serve and gateways do).
    async fn bootstrap(&mut self) -> Result<(), StartError> {
        let admin_key = self.settings.admin_key.as_deref();
        self.generated_admin_key = self.ledger.bootstrap(admin_key).await?;
        Ok(())
    }

    /// The HTTP layer's state: the control plane, the data plane and the read side.
    fn app_state(&self) -> Result<AppState, StartError> {
        let prices = PriceTable::shipped().map_err(StartError::Prices)?;
        let http = crate::proxy::client::upstream(&self.settings)?;
        Ok(AppState::new(
            crate::control::Control::new(
                self.ledger.clone(),
                self.sealer.clone(),
                self.settings.clone(),
                self.store.clone(),
            ),
            crate::proxy::DataPlane::new(
                self.ledger.clone(),
                self.sealer.clone(),
                prices,
                http,
                self.settings.clone(),
                self.metrics.clone(),
            ),
            self.ledger.clone(),
            self.store.clone(),
            self.settings.clone(),
            self.metrics.clone(),
        ))
    }

    /// Prints a generated admin key once, to the terminal only (never to the log): only its
    /// hash is kept.
    pub fn announce(&self) {
        if let Some(key) = &self.generated_admin_key {
            eprintln!("\nTollgate admin API key (shown once; store it now):\n\n    {key}\n");
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn store(&self) -> &Arc<dyn UsageStore> {
        &self.store
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Reads the master key from the settings, or from `<data dir>/master.key`, generating that
/// file (mode 0600) on first start.
fn master_key(settings: &Settings, dir: &Path) -> Result<Sealer, StartError> {
    if let Some(k) = &settings.master_key {
        return Sealer::from_base64(k).map_err(|source| StartError::MasterKey {
            from: "master_key".into(),
            source,
        });
    }
    let path = dir.join("master.key");
    let io = |source| StartError::DataDir {
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
    Sealer::from_base64(&text).map_err(|source| StartError::MasterKey {
        from: path.display().to_string(),
        source,
    })
}
