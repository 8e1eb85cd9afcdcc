//! The control plane: admin commands. Each validates its input against the current state,
//! builds the new entity snapshots and commits them as config events. Views (the JSON the SDK
//! reads) are in [`views`]. HTTP is not known here; errors are [`ControlError`] values.

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
use crate::ledger::{Ledger, LedgerError};
use crate::settings::Settings;
use crate::store::UsageStore;

use body::invalid;
pub use body::{parse_bool, Body};
pub use caller::Caller;
pub use limits::{new_budget, update_budget, update_rate_limits};
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

pub type Result<T> = std::result::Result<T, ControlError>;
