//! The `venta-gateway` binary: configuration, logging, signals. Everything
//! else lives in the library.

mod gentoken_cli;
mod healthcheck;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use venta_gateway::Gateway;
use venta_gateway::config::{Config, LogFormat};

#[cfg(all(feature = "mimalloc", feature = "jemalloc"))]
compile_error!("features `mimalloc` and `jemalloc` are exclusive: pick one global allocator");

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Real-time gateway: vendor location and vendor data updates to WebSocket
/// clients. Every option is also an environment variable (shown in [env: ]).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands alone: each parses only its own options (and the
/// gateway variables it shares by name), so a gateway setting that is bad
/// for serving cannot stop `gentoken`.
#[derive(Debug, Parser)]
#[command(name = "venta-gateway", version)]
struct ToolCli {
    #[command(subcommand)]
    command: Command,
}

const SUBCOMMANDS: [&str; 1] = ["gentoken"];

/// The container's health probe: handled before any parsing, so nothing but
/// its own arguments and WEBSOCKET_GATEWAY_PORT can fail it.
const HEALTHCHECK: &str = "healthcheck";

/// Subcommands that moved to the `venta` tool (crates/tools): a script that
/// still calls them learns where they went instead of a parse error.
const MOVED_TO_VENTA: [&str; 2] = ["bench", "publish"];

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print an HS256 token signed with JWT_SECRET (with JWT_ISSUER and
    /// JWT_AUDIENCE as `iss`/`aud` when set), for development.
    Gentoken(gentoken_cli::GentokenArgs),
    /// Probe this host's gateway for the container HEALTHCHECK: GET PATH
    /// (/health/live) on 127.0.0.1:$WEBSOCKET_GATEWAY_PORT or --addr
    /// HOST:PORT; exit 0 on 200, 1 otherwise. `healthcheck --help` for usage.
    #[command(disable_help_flag = true)]
    Healthcheck {
        /// [PATH] [--addr HOST:PORT]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Crates whose debug output would carry credentials: wtransport logs the
/// CONNECT request's `:path`, where browsers put `?token=`. They are capped
/// at `info` whatever `LOG_LEVEL` asks for.
const CAPPED_AT_INFO: [&str; 2] = ["wtransport", "wtransport_proto"];

fn init_logging(config: &Config) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // async-nats logs every failed reconnect attempt at info, without the
    // address; the bus logs the outage once, naming it. Unless asked for.
    let level = if config.log.level.contains("async_nats") {
        config.log.level.clone()
    } else {
        format!("{},async_nats=warn", config.log.level)
    };
    let filter = EnvFilter::try_new(&level).with_context(|| format!("invalid LOG_LEVEL {:?}", config.log.level))?;
    // The level hint matters: without one tracing assumes `trace` is on,
    // and every `log` record of tungstenite (one per frame) is bridged and
    // filtered at runtime (measured: ~8 % of the gateway's CPU per delivery).
    let hint = tracing_subscriber::layer::Filter::<tracing_subscriber::Registry>::max_level_hint(&filter);
    let no_secrets = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO || !CAPPED_AT_INFO.iter().any(|c| meta.target().starts_with(c))
    });
    let no_secrets = match hint {
        Some(hint) => no_secrets.with_max_level_hint(hint),
        None => no_secrets,
    };
    // Colours only for a person at a terminal, never into files or collectors.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let layer = match config.log.format {
        LogFormat::Json => fmt.json().with_filter(filter).with_filter(no_secrets).boxed(),
        LogFormat::Text => fmt.with_filter(filter).with_filter(no_secrets).boxed(),
    };
    tracing_subscriber::registry().with(layer).try_init().map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Why the gateway did not run: a configuration error exits 2 (the README's
/// promise), anything else 1.
enum RunFailure {
    Config(anyhow::Error),
    Other(anyhow::Error),
}

async fn run(config: Config) -> Result<bool, RunFailure> {
    let gateway = match Gateway::bind(config).await {
        Ok(g) => g,
        Err(e) if e.is_config() => return Err(RunFailure::Config(e.into())),
        Err(e) => return Err(RunFailure::Other(anyhow::Error::new(e).context("starting the gateway"))),
    };
    gateway.run(shutdown_signal()).await.context("serving").map_err(RunFailure::Other)
}

/// Logging for the subcommands: `LOG_LEVEL` if it parses, else warnings.
fn init_tool_logging() {
    let level = std::env::var("LOG_LEVEL").ok().filter(|l| EnvFilter::try_new(l).is_ok());
    let filter = EnvFilter::new(level.as_deref().unwrap_or("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn run_tool(command: Command) -> ExitCode {
    match command {
        Command::Gentoken(args) => {
            init_tool_logging();
            gentoken_cli::run(&args)
        }
        Command::Healthcheck { args } => healthcheck::main(args),
    }
}

fn main() -> ExitCode {
    let first = std::env::args_os().nth(1);
    let first = first.as_ref().and_then(|a| a.to_str());
    if first == Some(HEALTHCHECK) {
        return healthcheck::main(std::env::args_os().skip(2));
    }
    if let Some(moved) = first.filter(|a| MOVED_TO_VENTA.contains(a)) {
        eprintln!(
            "error: `venta-gateway {moved}` is now `venta {moved}`, a separate tool \
             (cargo install --path crates/tools --locked)"
        );
        return ExitCode::from(2);
    }
    if first.is_some_and(|a| SUBCOMMANDS.contains(&a)) {
        return run_tool(ToolCli::parse().command);
    }
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        // Gateway flags before the subcommand: still the subcommand.
        return run_tool(command);
    }
    if let Err(e) = init_logging(&cli.config) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = cli.config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let outcome = runtime.block_on(run(cli.config));
    // Blocking work still running (an fsync, a DNS lookup) must not hold the
    // exit past SHUTDOWN_TIMEOUT, which `run` has already spent.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(RunFailure::Config(e)) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(RunFailure::Other(e)) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
