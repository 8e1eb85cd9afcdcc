//! Settings: defaults < `tollgate.toml` < `TOLLGATE_*` environment < command-line flags.
//! Every layer goes through one `set(name, value)`; an unknown name anywhere is a startup error
//! that names it, never a silently ignored typo.
//!
//! Here: the checked [`Settings`] and their defaults; `set` parses one setting by name (and
//! lists them, [`KNOWN`]); `load` merges the layers.

mod load;
mod set;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use set::KNOWN;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("unknown setting {0}")]
    Unknown(String),
    #[error("setting {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// When the embedded log's writer calls `fdatasync` (see `crate::log::file`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Before acknowledging each batch.
    Always,
    /// At most this long after a write.
    Every(Duration),
}

/// The checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Threads serving HTTP, each with its own event loop accepting from the one listening socket.
    pub serve_threads: usize,
    pub data_dir: PathBuf,
    /// The bootstrap organisation admin key, when given; otherwise one is generated on first start.
    pub admin_key: Option<String>,
    /// Base64 32-byte key sealing provider credentials; otherwise generated into the data dir.
    pub master_key: Option<String>,
    pub max_body_bytes: usize,
    pub usage_fsync: Fsync,
    pub upstream_timeout: Duration,
    /// The largest upstream response body read (non-stream); past it the attempt ends with an
    /// error (still metered).
    pub max_upstream_body_bytes: usize,
    /// How long to keep reading a stream after its client went away, to meter the real usage.
    pub stream_drain_timeout: Duration,
    /// How long a client may take to send a request's headers (from connecting, or from its
    /// first byte on a kept-alive connection) before the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's whole body (408 after that).
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests before it is closed.
    pub idle_timeout: Duration,
    /// How long a client may leave a response unread (nothing can be written to it), or hold a
    /// stream back in all, before it is treated as gone: its connection is closed and a stream
    /// is metered without it.
    pub client_stall_timeout: Duration,
    /// The most client connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// The largest single event of a provider's stream; past it the stream ends with an error
    /// frame (still metered). Much smaller than a whole body: a stream holds a few events at once.
    pub max_stream_event_bytes: usize,
    /// Whether a provider's host may be a loopback, link-local, private or unspecified address.
    pub upstream_private_hosts: crate::domain::routing::PrivateHosts,
    pub log_format: LogFormat,
    /// Where alert emails go out, e.g. `smtp://127.0.0.1:25` or `smtps://user:pass@host`.
    pub smtp_url: Option<String>,
    pub alert_from: String,
    /// The organisation's owners and admins: they get every alert.
    pub alert_emails: Vec<String>,
    pub alert_webhook_url: Option<String>,
    /// Signs webhook bodies (HMAC-SHA256, `x-tollgate-signature: sha256=<hex>`).
    pub alert_webhook_secret: Option<String>,
    /// Distributed mode: the Kafka bootstrap servers (`host:port,...`).
    pub kafka_brokers: Option<String>,
    /// Prefix of the Kafka topic names (`<prefix>config`, `<prefix>usage`, `<prefix>limits`).
    pub topic_prefix: String,
    /// Partitions of the usage topic when Tollgate creates it.
    pub usage_partitions: i32,
    pub clickhouse: ClickhouseSettings,
    /// Largest size of the local spool that holds usage while Kafka is unreachable.
    pub spool_max_bytes: u64,
    /// What a gateway does while Kafka is unreachable: spool and keep serving, or refuse.
    pub when_kafka_down: WhenKafkaDown,
    /// Whether the Kafka producer is idempotent (default; see `crate::log::kafka`).
    pub kafka_idempotence: bool,
    /// How long a console session lasts after sign-in, however active.
    pub console_session_ttl: Duration,
    /// Console sign-in attempts allowed per client address per minute.
    pub console_signins_per_minute: u32,
}

/// Where ClickHouse is (distributed mode).
#[derive(Clone, Debug, Default)]
pub struct ClickhouseSettings {
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: String,
}

/// A gateway's behaviour while Kafka is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenKafkaDown {
    /// Keep serving; usage goes to the local spool (bounded by `spool_max_bytes`; when it is full,
    /// requests are refused with 503 rather than served unmetered) and drains in order later.
    Spool,
    /// Refuse requests with 503 until Kafka answers again.
    FailClosed,
}

impl std::fmt::Display for Settings {
    /// For the startup log: never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "listen={} serve_threads={} data_dir={} max_body_bytes={} max_connections={} usage_fsync={:?} upstream_timeout={:?} admin_key={} master_key={}",
            self.listen,
            self.serve_threads,
            self.data_dir.display(),
            self.max_body_bytes,
            self.max_connections,
            self.usage_fsync,
            self.upstream_timeout,
            if self.admin_key.is_some() { "set" } else { "unset" },
            if self.master_key.is_some() { "set" } else { "unset" },
        )
    }
}

/// One serving thread per CPU core, but one: that core is left to the log writer, the usage store's
/// ingestion and the background roles, so a serving thread is not preempted by them. On two cores
/// with the load generator on the same machine, one serving thread measured 21.1–21.4 k requests/s
/// with p99 4.95–5.19 ms at 64 connections, two 19.9–21.4 k with p99 8.3–9.1 ms (same runs;
/// benches/README.md, session 4).
fn default_serve_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            serve_threads: default_serve_threads(),
            data_dir: PathBuf::from("./tollgate-data"),
            admin_key: None,
            master_key: None,
            max_body_bytes: 10 << 20,
            usage_fsync: Fsync::Every(Duration::from_millis(10)),
            upstream_timeout: Duration::from_secs(600),
            max_upstream_body_bytes: 32 << 20,
            stream_drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            client_stall_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_stream_event_bytes: 1 << 20,
            upstream_private_hosts: crate::domain::routing::PrivateHosts::Allow,
            log_format: LogFormat::Text,
            smtp_url: None,
            alert_from: "tollgate@localhost".into(),
            alert_emails: Vec::new(),
            alert_webhook_url: None,
            alert_webhook_secret: None,
            kafka_brokers: None,
            topic_prefix: "tollgate.".into(),
            usage_partitions: 6,
            clickhouse: ClickhouseSettings {
                database: "tollgate".into(),
                ..Default::default()
            },
            spool_max_bytes: 1 << 30,
            when_kafka_down: WhenKafkaDown::Spool,
            kafka_idempotence: true,
            console_session_ttl: Duration::from_secs(8 * 3600),
            console_signins_per_minute: 10,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn display_hides_secrets() {
        let mut s = Settings::default();
        s.set("admin_key", "tg_secret").unwrap();
        assert!(!s.to_string().contains("tg_secret"));
    }
}
