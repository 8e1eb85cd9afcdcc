//! Tollgate: a self-hosted governance gateway and event-sourced usage meter for LLM traffic.
//!
//! # Layout
//! - [`domain`]: the pure core. Entities, events, the reducer ([`domain::State::apply`]), limits,
//!   pricing and routing configs. No I/O, no clock.
//! - [`codec`]: Avro single-object encoding of events (schemas in `schemas/`).
//! - [`log`]: the event-log port, its embedded adapter (durable, group-committed files; their
//!   format and recovery at open) and the Kafka adapter (rdkafka, with a local spool while Kafka
//!   is unreachable). It does not import the store.
//! - [`recovery`]: `tollgate log verify|salvage`: the embedded log's files and the usage store's
//!   positions in them (so it may import both).
//! - [`store`]: the usage-store port (raw events, rollups, analytics): SQLite and ClickHouse.
//! - [`files`]: private files and directories (0700 / 0600) in the data dir.
//! - [`crypto`]: provider-credential sealing (AES-256-GCM) and API-key secrets.
//! - [`settings`]: defaults < `tollgate.toml` < environment < flags, checked into [`settings::Settings`].
//! - [`control`]: the control plane: admin commands that validate input and emit config events.
//! - [`proxy`]: the data plane: auth, route resolution, upstream calls, streaming and metering.
//! - [`http`]: the axum server: thin handlers, the error body, analytics and operations routes.
//! - [`app`]: wiring: opens the log and store, replays state, runs the consumers (the embedded
//!   store and audit sinks), serves.
//! - [`aggregate`]: the distributed aggregator: usage topic -> ClickHouse, limit state back;
//!   config topic -> the audit log in ClickHouse.
//! - [`notify`]: the notifier: limit events to email (SMTP) and signed webhooks, recorded.
//! - [`telemetry`]: typed metrics (Prometheus text) and logging setup.

pub mod aggregate;
pub mod app;
pub mod codec;
pub mod control;
pub mod crypto;
pub mod domain;
pub mod files;
pub mod http;
pub mod log;
pub mod notify;
pub mod proxy;
pub mod recovery;
pub mod settings;
pub mod store;
pub mod telemetry;
