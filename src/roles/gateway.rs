//! `tollgate gateway`: the data and control planes of a distributed deployment, on Kafka (state
//! follows the config and limit topics; usage is appended there) and ClickHouse (analytics, and
//! the global usage totals it refreshes every few seconds).

use std::sync::Arc;

use tokio::sync::watch;

use super::{Node, StartError};
use crate::crypto::Sealer;
use crate::domain::{EntityKind, Millis, Totals};
use crate::ledger::replay::DISTRIBUTED_TOPICS;
use crate::ledger::Ledger;
use crate::log::kafka::KafkaLog;
use crate::settings::Settings;
use crate::store::clickhouse::ClickhouseStore;

/// Connects to Kafka and ClickHouse and rebuilds state from the config and limit topics, then
/// follows them. `bootstrap`: make sure the organisation and admin key exist (gateways do).
pub async fn open(
    settings: Settings,
    kafka: KafkaLog,
    clickhouse: ClickhouseStore,
    bootstrap: bool,
) -> Result<Node, StartError> {
    let key = settings
        .master_key
        .as_deref()
        .ok_or(StartError::NoMasterKey)?;
    let sealer = Sealer::from_base64(key).map_err(|source| StartError::MasterKey {
        from: "master_key".into(),
        source,
    })?;
    crate::files::private_dir(&settings.data_dir).map_err(|source| StartError::DataDir {
        path: settings.data_dir.display().to_string(),
        source,
    })?;
    let mut node = Node::new(
        settings,
        sealer,
        Arc::new(kafka),
        Arc::new(clickhouse),
        None,
    )?;
    node.ledger.replay(&DISTRIBUTED_TOPICS).await?;
    tokio::spawn({
        let ledger = node.ledger.clone();
        async move { ledger.follow().await }
    });
    if bootstrap {
        node.bootstrap().await?;
    }
    Ok(node)
}

impl Node {
    /// Serves the gateway on `listener` until `shutdown`, refreshing the global usage totals
    /// from `clickhouse` meanwhile.
    pub async fn gateway(
        self: Arc<Self>,
        clickhouse: ClickhouseStore,
        listener: std::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), StartError> {
        let app = Arc::new(self.app_state()?);
        tokio::spawn(refresh_totals(
            self.ledger.clone(),
            clickhouse,
            shutdown.clone(),
        ));
        crate::http::serve(listener, app, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
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
async fn refresh_totals(
    ledger: Arc<Ledger>,
    store: ClickhouseStore,
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
                    ledger.replace_usage_totals(all.into_iter().map(|((k, id), t)| (k, id, t)));
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
