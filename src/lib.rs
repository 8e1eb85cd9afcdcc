//! Tollgate: a self-hosted governance gateway and event-sourced usage meter for LLM traffic.
//!
//! # Layout
//! The pure core, its two ports with their adapters, the write side, the planes and the roles:
//! - [`domain`]: the pure core. Entities, events, the reducer ([`domain::State::apply`]), limits,
//!   pricing, scopes and routing configs. No I/O, no clock.
//! - Foundations: [`settings`] (defaults < `tollgate.toml` < environment < flags, checked into
//!   [`settings::Settings`]), [`telemetry`] (typed metrics, logging), [`files`] (private files
//!   and directories, 0700 / 0600), [`priority`] (background threads, hurried by waiting
//!   readers), [`crypto`] (provider-credential sealing, API-key secrets), [`codec`] (Avro
//!   single-object encoding of events; schemas in `schemas/`), [`providers`] (the upstream wire
//!   protocols: Anthropic, Bedrock, Gemini/Vertex; translation, signing, usage).
//! - [`log`]: the event-log port, its embedded adapter (durable, group-committed files; their
//!   format and recovery at open) and the Kafka adapter (rdkafka, with a local spool while Kafka
//!   is unreachable).
//! - [`store`]: the usage-store port (raw events, rollups, analytics, audit trail): SQLite and
//!   ClickHouse.
//! - [`ledger`]: the event-sourced write side: admin commands ([`ledger::Ledger::command`]),
//!   admission and metering (the governor), the fold and replay, following the log,
//!   read-your-writes, bootstrap.
//! - The planes: [`control`] (admin commands that validate input and commit config changes
//!   through the ledger) and [`proxy`] (the data plane: auth, route resolution, upstream calls,
//!   streaming and metering); [`http`] serves both (thin handlers, the error bodies, analytics
//!   and operations routes).
//! - [`roles`]: what a process runs: `serve` (embedded, every role), `gateway`, `aggregator`
//!   (the Kafka consumer group and the embedded sinks), `notifier`, the reset `sweep`; and
//!   [`recovery`] (`tollgate log verify|salvage`). `main.rs` parses the command line and starts
//!   a role.
//!
//! ## The layering rule (checked by `.ci/layers`)
//! A module imports only from the layers below it, never up and never in a circle:
//!
//! | module | may import |
//! |---|---|
//! | `domain`, `files`, `priority` | nothing of the crate |
//! | `settings`, `crypto`, `codec`, `providers` | `domain` |
//! | `telemetry` | `settings` |
//! | `log` | `codec`, `files`, `priority`, `settings` |
//! | `store` | `codec`, `domain`, `files`, `priority`, `settings` |
//! | `ledger` | `codec`, `crypto`, `domain`, `log`, `priority`, `settings`, `store`, `telemetry` |
//! | `control` | `crypto`, `domain`, `ledger`, `settings`, `store` |
//! | `proxy` | `crypto`, `domain`, `ledger`, `providers`, `settings`, `telemetry` |
//! | `http` | `control`, `domain`, `ledger`, `log`, `proxy`, `settings`, `store`, `telemetry` |
//! | `recovery` | `codec`, `files`, `ledger`, `log`, `settings`, `store` |
//! | `roles` | any of the above |

pub mod codec;
pub mod control;
pub mod crypto;
pub mod domain;
pub mod files;
pub mod http;
pub mod ledger;
pub mod log;
pub mod priority;
pub mod providers;
pub mod proxy;
pub mod recovery;
pub mod roles;
pub mod settings;
pub mod store;
pub mod telemetry;
