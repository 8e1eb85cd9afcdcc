//! Typed telemetry: a few named measurements with low-cardinality labels, rendered as
//! Prometheus text at `/metrics`, and the logging setup. Counters are atomics or a short
//! mutex-guarded map (one lock per request, no allocation once a label pair has been seen).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::settings::LogFormat;

/// Histogram bucket upper bounds, in seconds.
const BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// A fixed-bucket latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, n) in BOUNDS.iter().zip(&self.buckets) {
            acc += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Why an upstream attempt failed, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Status5xx,
    Status4xx,
    Body,
}

impl UpstreamFailure {
    fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Status5xx => "status_5xx",
            UpstreamFailure::Status4xx => "status_4xx",
            UpstreamFailure::Body => "body",
        }
    }
}

/// Why the server closed a client connection on a timeout, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnTimeout {
    /// The request's headers did not arrive in time (idle new connections, slowloris).
    HeaderRead,
    /// A kept-alive connection sat idle too long.
    Idle,
    /// The client left a response unread too long.
    ClientStall,
}

impl ConnTimeout {
    const ALL: [ConnTimeout; 3] = [
        ConnTimeout::HeaderRead,
        ConnTimeout::Idle,
        ConnTimeout::ClientStall,
    ];

    fn label(self) -> &'static str {
        match self {
            ConnTimeout::HeaderRead => "header_read",
            ConnTimeout::Idle => "idle",
            ConnTimeout::ClientStall => "client_stall",
        }
    }
}

/// All of Tollgate's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(&'static str, u16), u64>>,
    upstream_errors: Mutex<HashMap<UpstreamFailure, u64>>,
    /// Time spent in Tollgate itself: the request's total minus the time waiting on the provider.
    pub gateway_overhead: Histogram,
    pub upstream_time: Histogram,
    pub usage_events_appended: AtomicU64,
    pub config_events_appended: AtomicU64,
    pub usage_events_stored: AtomicU64,
    /// Client connections open now, across every serving thread; also what the cap is checked on.
    pub connections_open: AtomicU64,
    /// Client connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
    connections_timed_out: [AtomicU64; ConnTimeout::ALL.len()],
    /// Store-sink batches that failed (and were retried).
    pub store_sink_errors: AtomicU64,
}

impl Metrics {
    /// One HTTP request finished. `route` is the matched route pattern (a small, fixed set).
    pub fn request(&self, route: &'static str, status: u16) {
        *self.requests.lock().entry((route, status)).or_default() += 1;
    }

    pub fn upstream_failure(&self, why: UpstreamFailure) {
        *self.upstream_errors.lock().entry(why).or_default() += 1;
    }

    /// The server closed a client connection on a timeout.
    pub fn connection_timed_out(&self, why: ConnTimeout) {
        self.connections_timed_out[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn render_connections(&self, out: &mut String) {
        let open = self.connections_open.load(Ordering::Relaxed);
        let refused = self.connections_refused.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP tollgate_connections_open client connections open\n# TYPE tollgate_connections_open gauge\ntollgate_connections_open {open}\n# HELP tollgate_connections_refused_total client connections refused at the max_connections cap\n# TYPE tollgate_connections_refused_total counter\ntollgate_connections_refused_total {refused}"
        );
        out.push_str("# HELP tollgate_connections_timed_out_total client connections the server closed on a timeout\n");
        out.push_str("# TYPE tollgate_connections_timed_out_total counter\n");
        for why in ConnTimeout::ALL {
            let n = self.connections_timed_out[why as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "tollgate_connections_timed_out_total{{reason=\"{}\"}} {n}",
                why.label()
            );
        }
    }

    /// Prometheus text exposition, with the gauges read at the time of the scrape.
    pub fn render(&self, g: Gauges) -> String {
        let Gauges {
            store_lag_bytes,
            rate_limiters,
            spooled_bytes,
        } = g;
        let mut out = String::with_capacity(4096);
        self.render_requests(&mut out);
        self.gateway_overhead.render(
            "tollgate_gateway_overhead_seconds",
            "time spent in the gateway per data-plane request, excluding the provider",
            &mut out,
        );
        self.upstream_time.render(
            "tollgate_upstream_seconds",
            "time waiting on the provider per attempt",
            &mut out,
        );
        let counters = [
            (
                "tollgate_events_appended_total{topic=\"usage\"}",
                &self.usage_events_appended,
            ),
            (
                "tollgate_events_appended_total{topic=\"config\"}",
                &self.config_events_appended,
            ),
        ];
        out.push_str("# HELP tollgate_events_appended_total events durably appended to the log\n");
        out.push_str("# TYPE tollgate_events_appended_total counter\n");
        for (name, c) in counters {
            let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
        }
        self.render_connections(&mut out);
        self.render_store(&mut out, store_lag_bytes);
        let _ = writeln!(
            out,
            "# HELP tollgate_rate_limiters rate limiters held in memory\n# TYPE tollgate_rate_limiters gauge\ntollgate_rate_limiters {rate_limiters}"
        );
        let _ = writeln!(
            out,
            "# HELP tollgate_spool_bytes usage held in the local spool while Kafka is unreachable\n# TYPE tollgate_spool_bytes gauge\ntollgate_spool_bytes {spooled_bytes}"
        );
        out
    }

    /// HTTP requests by route and status, and failed upstream attempts by cause.
    fn render_requests(&self, out: &mut String) {
        out.push_str("# HELP tollgate_http_requests_total HTTP requests by route and status\n");
        out.push_str("# TYPE tollgate_http_requests_total counter\n");
        let mut rows: Vec<_> = self.requests.lock().iter().map(|(k, v)| (*k, *v)).collect();
        rows.sort();
        for ((route, status), n) in rows {
            let _ = writeln!(
                out,
                "tollgate_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP tollgate_upstream_errors_total failed upstream attempts by cause\n");
        out.push_str("# TYPE tollgate_upstream_errors_total counter\n");
        let mut rows: Vec<_> = self
            .upstream_errors
            .lock()
            .iter()
            .map(|(k, v)| (k.label(), *v))
            .collect();
        rows.sort();
        for (why, n) in rows {
            let _ = writeln!(out, "tollgate_upstream_errors_total{{cause=\"{why}\"}} {n}");
        }
    }

    /// The usage store's counters and lag.
    fn render_store(&self, out: &mut String, store_lag_bytes: u64) {
        let sink_errors = self.store_sink_errors.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP tollgate_store_sink_errors_total usage-store batches that failed and were retried\n# TYPE tollgate_store_sink_errors_total counter\ntollgate_store_sink_errors_total {sink_errors}"
        );
        let stored = self.usage_events_stored.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP tollgate_usage_events_stored_total usage events written to the usage store\n# TYPE tollgate_usage_events_stored_total counter\ntollgate_usage_events_stored_total {stored}"
        );
        let _ = writeln!(
            out,
            "# HELP tollgate_store_lag_bytes how far the usage store trails the usage log\n# TYPE tollgate_store_lag_bytes gauge\ntollgate_store_lag_bytes {store_lag_bytes}"
        );
    }
}

/// Gauges read when metrics are scraped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    /// How far the usage store trails the usage log (embedded mode).
    pub store_lag_bytes: u64,
    /// Rate limiters the governor holds (bounded by configuration).
    pub rate_limiters: usize,
    /// Usage spooled locally, not yet in Kafka (distributed gateways).
    pub spooled_bytes: u64,
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        m.upstream_failure(UpstreamFailure::Timeout);
        m.gateway_overhead.observe(Duration::from_micros(150));
        let text = m.render(Gauges {
            store_lag_bytes: 7,
            rate_limiters: 3,
            spooled_bytes: 0,
        });
        assert!(text.contains(
            "tollgate_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"
        ));
        assert!(text.contains("tollgate_upstream_errors_total{cause=\"timeout\"} 1"));
        assert!(text.contains("tollgate_gateway_overhead_seconds_bucket{le=\"0.00025\"} 1"));
        assert!(text.contains("tollgate_gateway_overhead_seconds_count 1"));
        assert!(text.contains("tollgate_store_lag_bytes 7"));
        assert!(text.contains("tollgate_rate_limiters 3"));
        assert!(text.contains("tollgate_connections_open 0"));
        assert!(text.contains("tollgate_connections_timed_out_total{reason=\"idle\"} 0"));
    }
}
