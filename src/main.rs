//! The `tollgate` command.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use std::sync::Arc;

use tollgate::codec;
use tollgate::log::kafka::KafkaLog;
use tollgate::log::Topic;
use tollgate::roles::{self, Node};
use tollgate::settings::{Settings, KNOWN};
use tollgate::store::clickhouse::ClickhouseStore;

/// mimalloc: the request path allocates many small short-lived buffers, where glibc malloc
/// showed up as ~12% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Self-hosted governance gateway and usage metering for LLM traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process on embedded backends (the data dir).
    Serve(ServeArgs),
    /// Distributed: serve the gateway (data and control planes) on Kafka and ClickHouse.
    Gateway(ServeArgs),
    /// Distributed: consume usage from Kafka into ClickHouse and publish limit state.
    Aggregator(ServeArgs),
    /// Distributed: send alert emails and webhooks for limit events.
    Notifier(ServeArgs),
    /// Distributed: create or upgrade the ClickHouse schema (idempotent, versioned).
    Migrate(ServeArgs),
    /// List every setting with its environment variable.
    Settings,
    /// Check or salvage the embedded event log (run with the server stopped).
    Log {
        #[command(subcommand)]
        action: LogAction,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// Report each log file's records and first damaged byte, and the usage store's positions.
    /// Exits 1 when something needs `salvage`.
    Verify(LogArgs),
    /// Keep every intact record of a damaged log file (whole batches only), move the damaged
    /// file aside, list what was lost, and move the store's positions back to match.
    Salvage(LogArgs),
}

#[derive(clap::Args)]
struct LogArgs {
    /// A settings file (default: ./tollgate.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [TOLLGATE_DATA_DIR].
    #[arg(long)]
    data_dir: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A settings file (default: ./tollgate.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve on [TOLLGATE_LISTEN].
    #[arg(long)]
    listen: Option<String>,
    /// Threads serving HTTP [TOLLGATE_SERVE_THREADS].
    #[arg(long)]
    serve_threads: Option<String>,
    /// Data directory [TOLLGATE_DATA_DIR].
    #[arg(long)]
    data_dir: Option<String>,
    /// Bootstrap admin API key [TOLLGATE_ADMIN_KEY].
    #[arg(long)]
    admin_key: Option<String>,
    /// Base64 32-byte master key for provider credentials [TOLLGATE_MASTER_KEY].
    #[arg(long)]
    master_key: Option<String>,
    /// Largest request body in bytes [TOLLGATE_MAX_BODY_BYTES].
    #[arg(long)]
    max_body_bytes: Option<String>,
    /// Usage-log fsync window in ms, 0 = before every acknowledgement [TOLLGATE_USAGE_FSYNC_MS].
    #[arg(long)]
    usage_fsync_ms: Option<String>,
    /// text or json [TOLLGATE_LOG_FORMAT].
    #[arg(long)]
    log_format: Option<String>,
}

#[expect(
    clippy::print_stdout,
    reason = "`tollgate settings` prints the list of settings"
)]
fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Settings => {
            for (name, help) in KNOWN {
                println!("{:<26} TOLLGATE_{:<26} {help}", name, name.to_uppercase());
            }
            Ok(())
        }
        Command::Serve(args) => run(args, serve),
        Command::Gateway(args) => run(args, gateway),
        Command::Aggregator(args) => run(args, aggregator),
        Command::Notifier(args) => run(args, notifier),
        Command::Migrate(args) => run(args, migrate),
        Command::Log { action } => log_tool(action),
    }
}

/// `tollgate log verify|salvage`.
#[expect(
    clippy::print_stdout,
    reason = "`tollgate log verify|salvage` print their report"
)]
fn log_tool(action: LogAction) -> anyhow::Result<()> {
    let (LogAction::Verify(args) | LogAction::Salvage(args)) = &action;
    let flags = [("data_dir", args.data_dir.clone())];
    let settings = Settings::load(args.config.as_deref(), std::env::vars(), &flags)?;
    let dir = settings.data_dir;
    match action {
        LogAction::Verify(_) => {
            let v = tollgate::recovery::verify(&dir)?;
            print!("{}", v.report);
            if !v.healthy {
                std::process::exit(1);
            }
        }
        LogAction::Salvage(_) => {
            let keep = |topic: Topic, payload: &[u8]| match topic {
                Topic::Config => codec::decode_config(payload).is_ok(),
                Topic::Usage => codec::decode_usage(payload).is_ok(),
                Topic::Limits => codec::decode_limit(payload).is_ok(),
            };
            print!("{}", tollgate::recovery::salvage(&dir, &keep)?);
        }
    }
    Ok(())
}

/// Loads the settings and runs a role on a multi-threaded runtime.
fn run<F: std::future::Future<Output = anyhow::Result<()>>>(
    args: ServeArgs,
    role: impl FnOnce(Settings) -> F,
) -> anyhow::Result<()> {
    let flags = [
        ("listen", args.listen),
        ("serve_threads", args.serve_threads),
        ("data_dir", args.data_dir),
        ("admin_key", args.admin_key),
        ("master_key", args.master_key),
        ("max_body_bytes", args.max_body_bytes),
        ("usage_fsync_ms", args.usage_fsync_ms),
        ("log_format", args.log_format),
    ];
    let mut settings = Settings::load(args.config.as_deref(), std::env::vars(), &flags)?;
    tollgate::telemetry::init_logging(settings.log_format);
    if let Some(open_files) = raise_open_file_limit() {
        fit_connections_to(&mut settings, open_files);
    }
    // Background roles; HTTP is served on threads of its own (`tollgate::http::serve`).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(role(settings))
}

/// Raises the open-file soft limit to the hard limit and returns it: every client connection
/// holds a descriptor, and at the usual soft limit of 1024 about a thousand idle sockets would
/// stop all service.
#[cfg(unix)]
#[expect(unsafe_code, reason = "getrlimit/setrlimit have no safe API in std")]
fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not read the open-file limit");
        return None;
    }
    // An unlimited hard limit is not a valid soft limit for files (the kernel caps it at nr_open).
    let wanted = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = lim.rlim_cur,
                to = wanted,
                "raised the open-file limit"
            );
            lim.rlim_cur = wanted;
        } else {
            tracing::warn!(soft = lim.rlim_cur, hard = lim.rlim_max, error = %std::io::Error::last_os_error(),
                "could not raise the open-file limit");
        }
    } else {
        tracing::info!(soft = lim.rlim_cur, "open-file limit");
    }
    Some(lim.rlim_cur)
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

/// Lowers `max_connections` (with a warning) to what the open-file limit leaves room for: half of
/// it past a reserve for the logs and the store, the other half for upstream connections.
fn fit_connections_to(settings: &mut Settings, open_files: u64) {
    let room = usize::try_from(open_files.saturating_sub(64) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if settings.max_connections > room {
        tracing::warn!(
            max_connections = settings.max_connections,
            open_file_limit = open_files,
            lowered_to = room,
            "max_connections is more than the open-file limit allows; lowered"
        );
        settings.max_connections = room;
    }
}

/// Kafka and ClickHouse clients of a distributed role, and its state rebuilt from the topics.
async fn open_distributed(settings: Settings, bootstrap: bool) -> anyhow::Result<Node> {
    let kafka = KafkaLog::open(&settings)
        .await
        .context("connecting to kafka")?;
    let clickhouse = ClickhouseStore::new(&settings.clickhouse)?;
    Ok(roles::gateway::open(settings, kafka, clickhouse, bootstrap).await?)
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let applied = ClickhouseStore::migrate(&settings.clickhouse)
        .await
        .context("migrating clickhouse")?;
    tracing::info!(database = %settings.clickhouse.database, ?applied, "clickhouse schema is current");
    Ok(())
}

async fn gateway(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(%settings, "starting tollgate gateway");
    let listen = settings.listen;
    let store = ClickhouseStore::new(&settings.clickhouse)?;
    let node = open_distributed(settings, true).await?;
    node.announce();
    let listener = bind(listen)?;
    Arc::new(node)
        .gateway(store, listener, stop_on_signal()?)
        .await?;
    Ok(())
}

async fn aggregator(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(%settings, "starting tollgate aggregator");
    let store = ClickhouseStore::new(&settings.clickhouse)?;
    let node = open_distributed(settings, false).await?;
    let stopped = stop_on_signal()?;
    tokio::spawn(roles::sweep::run(node.ledger().clone(), stopped.clone()));
    roles::aggregator::run(Arc::new(node), store, stopped).await?;
    Ok(())
}

async fn notifier(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(%settings, "starting tollgate notifier");
    let node = open_distributed(settings, false).await?;
    roles::notifier::run(Arc::new(node), stop_on_signal()?).await;
    Ok(())
}

/// The listening socket the serving threads share (backlog 1024, as tokio's `bind`).
fn bind(listen: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    let listener: TcpListener = socket
        .bind(&listen.into())
        .and_then(|()| socket.listen(1024))
        .map(|()| socket.into())
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving");
    Ok(listener)
}

/// A shutdown flag raised on SIGINT/SIGTERM. The handlers are installed before this returns, not
/// when a task first runs: a signal that comes once the process serves always stops it cleanly
/// (on a busy machine the task could otherwise run after the first requests were answered, and
/// an early SIGTERM would kill the process instead).
fn stop_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (stop, stopped) = watch::channel(false);
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing work in flight");
        let _ = stop.send(true);
    });
    Ok(stopped)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(%settings, "starting tollgate serve");
    let listen = settings.listen;
    let node = roles::serve::open(settings)
        .await
        .context("opening the data dir")?;
    node.announce();
    let listener = bind(listen)?;
    Arc::new(node).serve(listener, stop_on_signal()?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_is_lowered_to_what_the_open_file_limit_allows() {
        let mut s = Settings::default();
        fit_connections_to(&mut s, 1 << 20);
        assert_eq!(s.max_connections, 4096, "room enough: unchanged");
        fit_connections_to(&mut s, 1024);
        assert_eq!(s.max_connections, 480);
        fit_connections_to(&mut s, 10);
        assert_eq!(s.max_connections, 1);
    }
}
