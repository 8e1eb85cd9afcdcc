//! Settings: defaults < `tollgate.toml` < `TOLLGATE_*` environment < command-line flags.
//! Every layer goes through one `set(name, value)`; an unknown name anywhere is a startup error
//! that names it, never a silently ignored typo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::log::file::Fsync;

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

/// Every setting: its name (as in the file; `TOLLGATE_` + upper case in the environment) and help.
pub const KNOWN: &[(&str, &str)] = &[
    ("listen", "address to serve on (default 127.0.0.1:8787)"),
    ("serve_threads", "threads serving HTTP, each its own event loop (default: one per CPU core but one, at least 1)"),
    ("data_dir", "directory for the log, the usage store and generated keys (default ./tollgate-data)"),
    ("admin_key", "bootstrap organisation admin API key (default: generated on first start, printed once)"),
    ("master_key", "base64 32-byte key that encrypts provider credentials (default: generated into the data dir)"),
    ("max_body_bytes", "largest accepted request body (default 10485760)"),
    ("usage_fsync_ms", "usage-log fdatasync window in ms; 0 syncs before every acknowledgement (default 10)"),
    ("upstream_timeout_ms", "upstream request timeout in ms (default 600000)"),
    ("max_upstream_body_bytes", "largest upstream (non-stream) response body (default 33554432)"),
    ("stream_drain_timeout_ms", "how long to keep reading a stream whose client left (default 30000)"),
    ("header_read_timeout_ms", "longest time a client may take to send a request's headers (default 10000)"),
    ("body_read_timeout_ms", "longest time a client may take to send a request's body; 408 after it (default 60000)"),
    ("idle_timeout_ms", "how long an idle kept-alive connection stays open (default 75000)"),
    ("client_stall_timeout_ms", "how long a client may leave a response unread, or hold a stream back in all, before it is treated as gone (default 30000)"),
    ("max_connections", "most client connections open at once; more are refused with 503 (default 4096)"),
    ("max_stream_event_bytes", "largest single event of a provider's stream; past it the stream ends with an error (default 1048576)"),
    ("upstream_private_hosts", "allow (default) or deny provider hosts that are loopback, link-local, private or unspecified addresses"),
    ("log_format", "text or json (default text)"),
    ("smtp_url", "SMTP server for alert emails, e.g. smtp://127.0.0.1:25 (default: no email)"),
    ("alert_from", "sender of alert emails (default tollgate@localhost)"),
    ("alert_emails", "comma-separated organisation owners/admins who get every alert"),
    ("alert_webhook_url", "organisation webhook for alerts (default: none)"),
    ("alert_webhook_secret", "HMAC-SHA256 key signing webhook bodies"),
    ("kafka_brokers", "distributed mode: Kafka bootstrap servers, host:port[,host:port]"),
    ("topic_prefix", "distributed mode: prefix of the topic names (default tollgate.)"),
    ("usage_partitions", "distributed mode: partitions of the usage topic when created (default 6)"),
    ("clickhouse_url", "distributed mode: ClickHouse HTTP URL, e.g. http://127.0.0.1:8123"),
    ("clickhouse_user", "distributed mode: ClickHouse user (default: the server's default)"),
    ("clickhouse_password", "distributed mode: ClickHouse password"),
    ("clickhouse_database", "distributed mode: ClickHouse database (default tollgate)"),
    ("spool_max_bytes", "distributed mode: largest local usage spool while Kafka is down (default 1073741824)"),
    ("when_kafka_down", "distributed mode: spool (keep serving; default) or fail_closed (answer 503)"),
    ("kafka_idempotence", "distributed mode: idempotent producer, true (default) or false"),
];

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
        }
    }
}

impl Settings {
    /// Sets one setting from its text.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SettingsError> {
        let invalid = |reason: &str| SettingsError::Invalid {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let number = || {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| invalid("expected a whole number"))
        };
        // A zero timeout would close every connection at once; it is refused, not "no timeout".
        let positive_ms = |ms: u64| {
            (ms > 0)
                .then(|| Duration::from_millis(ms))
                .ok_or_else(|| invalid("at least 1 ms"))
        };
        match name {
            "listen" => {
                self.listen = value
                    .parse()
                    .map_err(|_| invalid("expected host:port, e.g. 127.0.0.1:8787"))?
            }
            "serve_threads" => {
                self.serve_threads = usize::try_from(number()?)
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| invalid("from 1 to 1024"))?
            }
            "data_dir" => self.data_dir = PathBuf::from(value),
            "admin_key" => self.admin_key = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "master_key" => self.master_key = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "max_body_bytes" => {
                self.max_body_bytes = usize::try_from(number()?)
                    .ok()
                    .filter(|n| *n >= 1024)
                    .ok_or_else(|| invalid("at least 1024"))?
            }
            "max_upstream_body_bytes" => {
                self.max_upstream_body_bytes = usize::try_from(number()?)
                    .ok()
                    .filter(|n| *n >= 1024)
                    .ok_or_else(|| invalid("at least 1024"))?
            }
            "usage_fsync_ms" => {
                self.usage_fsync = match number()? {
                    0 => Fsync::Always,
                    ms => Fsync::Every(Duration::from_millis(ms)),
                }
            }
            "upstream_timeout_ms" => {
                self.upstream_timeout = Duration::from_millis(number()?.max(1))
            }
            "stream_drain_timeout_ms" => {
                self.stream_drain_timeout = Duration::from_millis(number()?)
            }
            "header_read_timeout_ms" => self.header_read_timeout = positive_ms(number()?)?,
            "body_read_timeout_ms" => self.body_read_timeout = positive_ms(number()?)?,
            "idle_timeout_ms" => self.idle_timeout = positive_ms(number()?)?,
            "client_stall_timeout_ms" => self.client_stall_timeout = positive_ms(number()?)?,
            "max_connections" => {
                self.max_connections = usize::try_from(number()?)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid("at least 1"))?
            }
            "max_stream_event_bytes" => {
                self.max_stream_event_bytes = usize::try_from(number()?)
                    .ok()
                    .filter(|n| *n >= 1024)
                    .ok_or_else(|| invalid("at least 1024"))?
            }
            "upstream_private_hosts" => {
                use crate::domain::routing::PrivateHosts;
                self.upstream_private_hosts = match value {
                    "allow" => PrivateHosts::Allow,
                    "deny" => PrivateHosts::Deny,
                    _ => return Err(invalid("expected allow or deny")),
                }
            }
            "log_format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(invalid("expected text or json")),
                }
            }
            "smtp_url" => self.smtp_url = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "alert_from" => self.alert_from = value.to_owned(),
            "alert_emails" => {
                self.alert_emails = value
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "alert_webhook_url" => {
                self.alert_webhook_url = Some(value.to_owned()).filter(|v| !v.is_empty())
            }
            "alert_webhook_secret" => {
                self.alert_webhook_secret = Some(value.to_owned()).filter(|v| !v.is_empty())
            }
            "kafka_brokers" => {
                self.kafka_brokers = Some(value.to_owned()).filter(|v| !v.is_empty())
            }
            "topic_prefix" => self.topic_prefix = value.to_owned(),
            "usage_partitions" => {
                self.usage_partitions = i32::try_from(number()?)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid("at least 1"))?
            }
            "clickhouse_url" => {
                self.clickhouse.url = Some(value.to_owned()).filter(|v| !v.is_empty())
            }
            "clickhouse_user" => {
                self.clickhouse.user = Some(value.to_owned()).filter(|v| !v.is_empty())
            }
            "clickhouse_password" => {
                self.clickhouse.password = Some(value.to_owned()).filter(|v| !v.is_empty())
            }
            "clickhouse_database" => {
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(invalid("letters, digits and _ only"));
                }
                self.clickhouse.database = value.to_owned()
            }
            "spool_max_bytes" => self.spool_max_bytes = number()?,
            "kafka_idempotence" => {
                self.kafka_idempotence = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid("expected true or false")),
                }
            }
            "when_kafka_down" => {
                self.when_kafka_down = match value {
                    "spool" => WhenKafkaDown::Spool,
                    "fail_closed" => WhenKafkaDown::FailClosed,
                    _ => return Err(invalid("expected spool or fail_closed")),
                }
            }
            other => return Err(SettingsError::Unknown(other.to_owned())),
        }
        Ok(())
    }

    /// Loads the layers. `file` is the explicit `--config`; otherwise `./tollgate.toml` if present.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, Option<String>)],
    ) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        let default_file = Path::new("tollgate.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        if let Some(path) = file {
            s.merge_file(path)?;
        }
        for (k, v) in env {
            if let Some(name) = k.strip_prefix("TOLLGATE_") {
                let name = name.to_ascii_lowercase();
                s.set(&name, &v).map_err(|e| match e {
                    SettingsError::Unknown(_) => SettingsError::Unknown(k.clone()),
                    SettingsError::Invalid { reason, .. } => SettingsError::Invalid {
                        name: k.clone(),
                        reason,
                    },
                    other => other,
                })?;
            }
        }
        for (name, value) in flags {
            if let Some(v) = value {
                s.set(name, v)?;
            }
        }
        Ok(s)
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), SettingsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::File {
            path: shown.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|source| SettingsError::Toml {
            path: shown.clone(),
            source: Box::new(source),
        })?;
        for (k, v) in table {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(SettingsError::Invalid {
                        name: k,
                        reason: format!("unsupported value {other}"),
                    })
                }
            };
            self.set(&k, &text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:1\"\nmax_body_bytes = 2048\nlog_format = \"json\"\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&f),
            env(&[("TOLLGATE_LISTEN", "127.0.0.1:2"), ("PATH", "/bin")]),
            &[("data_dir", Some("/tmp/x".into())), ("listen", None)],
        )
        .unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.max_body_bytes, 2048);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_and_invalid_settings_are_named() {
        let e = Settings::load(None, env(&[("TOLLGATE_LISTN", "x")]), &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown setting TOLLGATE_LISTN");
        let e = Settings::load(None, env(&[("TOLLGATE_MAX_BODY_BYTES", "lots")]), &[]).unwrap_err();
        assert!(e.to_string().contains("TOLLGATE_MAX_BODY_BYTES"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        assert_eq!(
            Settings::load(Some(&f), env(&[]), &[])
                .unwrap_err()
                .to_string(),
            "unknown setting lisen"
        );
    }

    #[test]
    fn serve_threads_default_to_a_core_each_but_one() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Settings::default().serve_threads, (cores - 1).max(1));
        let s = Settings::load(None, env(&[("TOLLGATE_SERVE_THREADS", "3")]), &[]).unwrap();
        assert_eq!(s.serve_threads, 3);
        for bad in ["0", "1025", "two"] {
            let e = Settings::load(None, env(&[("TOLLGATE_SERVE_THREADS", bad)]), &[]).unwrap_err();
            assert!(
                e.to_string().starts_with("setting TOLLGATE_SERVE_THREADS"),
                "{e}"
            );
        }
    }

    #[test]
    fn connection_settings_are_checked() {
        let s = Settings::load(
            None,
            env(&[
                ("TOLLGATE_HEADER_READ_TIMEOUT_MS", "250"),
                ("TOLLGATE_MAX_CONNECTIONS", "3"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(s.header_read_timeout, Duration::from_millis(250));
        assert_eq!(s.max_connections, 3);
        assert_eq!(s.idle_timeout, Duration::from_secs(75));
        for (name, bad) in [
            ("TOLLGATE_IDLE_TIMEOUT_MS", "0"),
            ("TOLLGATE_MAX_CONNECTIONS", "0"),
            ("TOLLGATE_CLIENT_STALL_TIMEOUT_MS", "soon"),
        ] {
            let e = Settings::load(None, env(&[(name, bad)]), &[]).unwrap_err();
            assert!(e.to_string().starts_with(&format!("setting {name}")), "{e}");
        }
    }

    #[test]
    fn display_hides_secrets() {
        let mut s = Settings::default();
        s.set("admin_key", "tg_secret").unwrap();
        assert!(!s.to_string().contains("tg_secret"));
    }
}
