//! Security and robustness: each test reproduces one way a governed key could leak, lift or dodge
//! a control, or a fault could serve traffic unmetered or exhaust the server, and asserts the
//! fixed behaviour. One file per area:
//! - [`privilege`]: credentials, scopes, who may change a limit, provisioning.
//! - [`limits`]: budgets and rate limits that bind (in flight, reservations, windows, metadata).
//! - [`durability`]: nothing served unmetered (full disk, atomic admin changes, log recovery).
//! - [`resources`]: connections, request bodies, streams whose client stops reading.
//! - [`routing`]: where a credential may go, configs and upstream responses of any size.
//! - [`audit`]: every admin change recorded with its actor, served by `GET /v1/audit-logs`.
//! - [`console`]: the web console's sessions, CSRF, isolation, headers and secrets.

mod audit;
mod common;
pub(crate) mod console;
mod durability;
mod limits;
mod privilege;
mod resources;
mod routing;
