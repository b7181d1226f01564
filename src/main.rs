//! The `venta-gateway` binary: configuration, logging, signals. Everything
//! else lives in the library.

mod bench;
mod gentoken_cli;
mod publish_cli;

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

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Publish an update by hand (gRPC by default, or HTTP, or NATS).
    Publish(publish_cli::PublishArgs),
    // Help text lives on `BenchArgs` (a doc comment here would replace it).
    Bench(Box<bench::BenchArgs>),
    /// Print an HS256 token signed with JWT_SECRET (with JWT_ISSUER and
    /// JWT_AUDIENCE as `iss`/`aud` when set), for development.
    Gentoken(gentoken_cli::GentokenArgs),
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(&config.log_level).with_context(|| format!("invalid LOG_LEVEL {:?}", config.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
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

async fn run(config: Config) -> anyhow::Result<bool> {
    let gateway = Gateway::bind(config).await.context("starting the gateway")?;
    gateway.run(shutdown_signal()).await.context("serving")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.config) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    if let Some(Command::Bench(args)) = cli.command {
        // Its own runtime: single-threaded by default (`--threads`).
        return bench::main(*args);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Gentoken(args)) = &cli.command {
        return gentoken_cli::run(&cli.config, args);
    }
    if let Some(Command::Publish(args)) = cli.command {
        return match runtime.block_on(publish_cli::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(cli.config)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
