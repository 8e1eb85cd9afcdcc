//! Parsing one setting from its text, by name; the list of every setting and its help.

use std::path::PathBuf;
use std::time::Duration;

use super::{Fsync, LogFormat, Settings, SettingsError, WhenKafkaDown};

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
    ("console_session_ttl_ms", "how long a web console session lasts after sign-in (default 28800000, 8 hours)"),
    ("console_signins_per_minute", "web console sign-in attempts allowed per client address per minute (default 10)"),
];

/// One setting's name and text, and how to read it.
struct Text<'a> {
    name: &'a str,
    value: &'a str,
}

impl Text<'_> {
    fn invalid(&self, reason: &str) -> SettingsError {
        SettingsError::Invalid {
            name: self.name.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn number(&self) -> Result<u64, SettingsError> {
        self.value
            .trim()
            .parse::<u64>()
            .map_err(|_| self.invalid("expected a whole number"))
    }

    fn at_least(&self, min: usize) -> Result<usize, SettingsError> {
        usize::try_from(self.number()?)
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| self.invalid(&format!("at least {min}")))
    }

    fn ms(&self) -> Result<Duration, SettingsError> {
        Ok(Duration::from_millis(self.number()?))
    }

    /// A zero timeout would close every connection at once; it is refused, not "no timeout".
    fn positive_ms(&self) -> Result<Duration, SettingsError> {
        Some(self.ms()?)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| self.invalid("at least 1 ms"))
    }

    /// The text, or None when it is empty.
    fn optional(&self) -> Option<String> {
        Some(self.value.to_owned()).filter(|v| !v.is_empty())
    }

    /// One of a few named values.
    fn choice<T: Copy>(&self, options: &[(&str, T)]) -> Result<T, SettingsError> {
        options
            .iter()
            .find(|(name, _)| *name == self.value)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
                self.invalid(&format!("expected {}", names.join(" or ")))
            })
    }
}

impl Settings {
    /// Sets one setting from its text.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SettingsError> {
        let text = Text { name, value };
        if self.set_serving(&text)?
            || self.set_timeout(&text)?
            || self.set_alerting(&text)?
            || self.set_distributed(&text)?
        {
            Ok(())
        } else {
            Err(SettingsError::Unknown(name.to_owned()))
        }
    }

    /// The server's own settings; false when `v` is not one of them.
    fn set_serving(&mut self, v: &Text) -> Result<bool, SettingsError> {
        use crate::domain::routing::PrivateHosts;
        match v.name {
            "listen" => {
                self.listen = v
                    .value
                    .parse()
                    .map_err(|_| v.invalid("expected host:port, e.g. 127.0.0.1:8787"))?
            }
            "serve_threads" => {
                self.serve_threads = usize::try_from(v.number()?)
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| v.invalid("from 1 to 1024"))?
            }
            "data_dir" => self.data_dir = PathBuf::from(v.value),
            "admin_key" => self.admin_key = v.optional(),
            "master_key" => self.master_key = v.optional(),
            "max_body_bytes" => self.max_body_bytes = v.at_least(1024)?,
            "max_upstream_body_bytes" => self.max_upstream_body_bytes = v.at_least(1024)?,
            "usage_fsync_ms" => {
                self.usage_fsync = match v.number()? {
                    0 => Fsync::Always,
                    ms => Fsync::Every(Duration::from_millis(ms)),
                }
            }
            "max_connections" => self.max_connections = v.at_least(1)?,
            "console_signins_per_minute" => {
                self.console_signins_per_minute =
                    u32::try_from(v.at_least(1)?).map_err(|_| v.invalid("at most 4294967295"))?
            }
            "max_stream_event_bytes" => self.max_stream_event_bytes = v.at_least(1024)?,
            "upstream_private_hosts" => {
                self.upstream_private_hosts =
                    v.choice(&[("allow", PrivateHosts::Allow), ("deny", PrivateHosts::Deny)])?
            }
            "log_format" => {
                self.log_format =
                    v.choice(&[("text", LogFormat::Text), ("json", LogFormat::Json)])?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The timeouts; false when `v` is not one of them.
    fn set_timeout(&mut self, v: &Text) -> Result<bool, SettingsError> {
        match v.name {
            "upstream_timeout_ms" => {
                self.upstream_timeout = Duration::from_millis(v.number()?.max(1))
            }
            "stream_drain_timeout_ms" => self.stream_drain_timeout = v.ms()?,
            "header_read_timeout_ms" => self.header_read_timeout = v.positive_ms()?,
            "body_read_timeout_ms" => self.body_read_timeout = v.positive_ms()?,
            "idle_timeout_ms" => self.idle_timeout = v.positive_ms()?,
            "client_stall_timeout_ms" => self.client_stall_timeout = v.positive_ms()?,
            "console_session_ttl_ms" => self.console_session_ttl = v.positive_ms()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Where alerts go; false when `v` is not one of these settings.
    fn set_alerting(&mut self, v: &Text) -> Result<bool, SettingsError> {
        match v.name {
            "smtp_url" => self.smtp_url = v.optional(),
            "alert_from" => self.alert_from = v.value.to_owned(),
            "alert_emails" => {
                self.alert_emails = v
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "alert_webhook_url" => self.alert_webhook_url = v.optional(),
            "alert_webhook_secret" => self.alert_webhook_secret = v.optional(),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Distributed mode (Kafka, ClickHouse); false when `v` is not one of its settings.
    fn set_distributed(&mut self, v: &Text) -> Result<bool, SettingsError> {
        match v.name {
            "kafka_brokers" => self.kafka_brokers = v.optional(),
            "topic_prefix" => self.topic_prefix = v.value.to_owned(),
            "usage_partitions" => {
                self.usage_partitions = i32::try_from(v.number()?)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| v.invalid("at least 1"))?
            }
            "clickhouse_url" => self.clickhouse.url = v.optional(),
            "clickhouse_user" => self.clickhouse.user = v.optional(),
            "clickhouse_password" => self.clickhouse.password = v.optional(),
            "clickhouse_database" => {
                let name = v.value;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(v.invalid("letters, digits and _ only"));
                }
                self.clickhouse.database = name.to_owned()
            }
            "spool_max_bytes" => self.spool_max_bytes = v.number()?,
            "kafka_idempotence" => {
                self.kafka_idempotence = v.choice(&[("true", true), ("false", false)])?
            }
            "when_kafka_down" => {
                self.when_kafka_down = v.choice(&[
                    ("spool", WhenKafkaDown::Spool),
                    ("fail_closed", WhenKafkaDown::FailClosed),
                ])?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::env;

    #[test]
    fn every_known_setting_is_read_and_no_other() {
        for (name, _) in KNOWN {
            let r = Settings::default().set(name, "");
            assert!(!matches!(r, Err(SettingsError::Unknown(_))), "{name}");
        }
        assert!(matches!(
            Settings::default().set("usage_fsync", "1"),
            Err(SettingsError::Unknown(_))
        ));
    }

    #[test]
    fn choices_name_what_is_expected() {
        let e = Settings::default()
            .set("when_kafka_down", "maybe")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "setting when_kafka_down: expected spool or fail_closed"
        );
        for (name, value) in [
            ("console_session_ttl_ms", "0"),
            ("console_signins_per_minute", "0"),
            ("console_signins_per_minute", "99999999999"),
        ] {
            assert!(
                Settings::default().set(name, value).is_err(),
                "{name}={value}"
            );
        }
        let e = Settings::default().set("max_body_bytes", "10").unwrap_err();
        assert_eq!(e.to_string(), "setting max_body_bytes: at least 1024");
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
}
