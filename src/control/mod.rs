//! The control plane: admin commands. Each validates its input against the current state,
//! builds the new entity snapshots and commits them as config events. Views (the JSON the SDK
//! reads) are in [`views`]. HTTP is not known here; errors are [`ControlError`] values.
//!
//! One module a resource: [`workspaces`], [`integrations`], [`providers`] (and virtual keys),
//! [`configs`], [`api_keys`], [`policies`], [`audit_logs`]. What they share: the [`Caller`] and
//! its checks (`caller.rs`), request bodies (`body.rs`), budgets and rate limits (`limits.rs`),
//! slugs and ids (`slugs.rs`), pagination (`page.rs`), and here the commit helpers: every write
//! goes through `ctl.ledger.command()` (which holds the admin lock) and `commit`.

mod body;
mod caller;
mod limits;
mod page;
mod slugs;

pub mod api_keys;
pub mod audit_logs;
pub mod configs;
pub mod integrations;
pub mod policies;
pub mod providers;
pub mod views;
pub mod workspaces;

use std::sync::Arc;

use serde_json::Map;

use crate::crypto::Sealer;
use crate::domain::{Change, Entity, EntityKind};
use crate::ledger::{Command, Ledger, LedgerError};
use crate::settings::Settings;
use crate::store::UsageStore;

use body::invalid;
pub use body::{parse_bool, Body};
pub use caller::Caller;
pub use limits::{new_budget, new_rate_limits, update_budget, update_limits, update_rate_limits};
pub use page::Page;
pub use slugs::{check_new_slug, check_slug, make_slug, new_id};

/// Why an admin command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(Box<LedgerError>),
}

impl From<LedgerError> for ControlError {
    fn from(e: LedgerError) -> Self {
        ControlError::Internal(Box::new(e))
    }
}

impl From<crate::store::StoreError> for ControlError {
    fn from(e: crate::store::StoreError) -> Self {
        ControlError::from(LedgerError::Store(e))
    }
}

/// What admin commands use: the ledger (state and the one way to change it), the credential
/// sealer, the settings they check against, and the usage store (the audit trail).
pub struct Control {
    ledger: Arc<Ledger>,
    sealer: Sealer,
    settings: Arc<Settings>,
    store: Arc<dyn UsageStore>,
}

impl Control {
    /// The control plane over `ledger`, sealing credentials with `sealer`.
    pub fn new(
        ledger: Arc<Ledger>,
        sealer: Sealer,
        settings: Arc<Settings>,
        store: Arc<dyn UsageStore>,
    ) -> Self {
        Control {
            ledger,
            sealer,
            settings,
            store,
        }
    }
}

/// The result of an admin command.
pub type Result<T> = std::result::Result<T, ControlError>;

/// Commits `changes` with `caller` as their actor (the audit trail).
async fn commit(command: Command<'_>, caller: &Caller, changes: Vec<Change>) -> Result<()> {
    Ok(command.commit(Some(caller.actor()), changes).await?)
}

/// Commits one entity, new or replaced, with `caller` as its actor.
async fn upsert(command: Command<'_>, caller: &Caller, entity: Entity) -> Result<()> {
    commit(command, caller, vec![Change::Upsert(entity)]).await
}

/// Commits the removal of one entity, with `caller` as its actor.
async fn remove(command: Command<'_>, caller: &Caller, kind: EntityKind, id: String) -> Result<()> {
    commit(command, caller, vec![Change::Delete { kind, id }]).await
}

/// Runs a command that answers `{}`: `decide` makes its changes from the state (under the
/// admin lock, so no other command changes it meanwhile); they are committed as `caller`'s.
async fn execute(
    ctl: &Control,
    caller: &Caller,
    decide: impl FnOnce(&crate::domain::State) -> Result<Vec<Change>>,
) -> Result<serde_json::Value> {
    let command = ctl.ledger.command().await;
    let changes = decide(&ctl.ledger.state())?;
    commit(command, caller, changes).await?;
    Ok(serde_json::json!({}))
}
