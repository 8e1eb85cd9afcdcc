//! The pure core: entities, events, the reducer and the decisions made on them.
//!
//! Nothing here touches the network, the disk or a clock; time is always an argument.
//! Every role (gateway, aggregator, notifier) folds the same events with [`State::apply`].

pub mod alerts;
pub mod audit;
pub mod budget;
pub mod catalog;
pub mod entities;
pub mod events;
pub mod hash;
pub mod limits;
pub mod pricing;
pub mod rate;
pub mod routing;
pub mod scopes;
pub mod state;
pub mod time;

pub use audit::{Action, Actor, Audit, AuditEntry, AuditQuery};
pub use entities::*;
pub use events::*;
pub use state::{State, Totals};
pub use time::Millis;
