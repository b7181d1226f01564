//! `venta`: the command-line tools of a venta-gateway deployment, apart from
//! the server so that it ships no load generator and an edit here
//! recompiles no server.
//!
//! - `venta bench`: load-test a gateway ([`bench`]).
//! - `venta publish`: publish one update by hand over gRPC, HTTP or NATS ([`publish`]).
//! - `venta sub`: print vendors' live updates as a client gets them, one JSON line each ([`sub`]).
//!
//! They reach the gateway as its clients and publishers do: the wire
//! contract (`venta-protocol`), the client (`venta-client`) and a gRPC client
//! stub generated from `proto/` ([`pb`]), never the server's internals.

mod bench;
mod defaults;
mod publish;
mod sub;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use tracing_subscriber::EnvFilter;

/// The gateway's gRPC ingest API, client side only (build.rs).
mod pb {
    tonic::include_proto!("venta.gateway.v1");
}

/// Tools for a venta-gateway deployment: load-test it, publish updates,
/// watch what its clients receive.
#[derive(Debug, clap::Parser)]
#[command(name = "venta", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    // Help text lives on `BenchArgs` (a doc comment here would replace it).
    Bench(Box<bench::BenchArgs>),
    /// Publish an update by hand (gRPC by default, or HTTP, or NATS).
    Publish(publish::PublishArgs),
    // Help text lives on `SubArgs`.
    Sub(sub::SubArgs),
}

/// `LOG_LEVEL` if it parses, else warnings: the tools' own output is on
/// stdout and stderr; logs are for digging into a failure.
fn init_logging() {
    let level = std::env::var("LOG_LEVEL").ok().filter(|l| EnvFilter::try_new(l).is_ok());
    let filter = EnvFilter::new(level.as_deref().unwrap_or("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs `f` on a multi-threaded runtime; an error is printed and exits 1.
fn block_on<F: Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Parsed through the matches so `bench` can tell a given --nats-url
    // (or NATS_URL) from its default.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let nats_url_given = matches
        .subcommand_matches("bench")
        .and_then(|m| m.value_source("nats_url"))
        .is_some_and(|s| matches!(s, clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable));
    init_logging();
    match cli.command {
        // Its own runtime: single-threaded by default (`--threads`).
        Command::Bench(mut args) => {
            args.nats_url_given = nats_url_given;
            bench::main(*args)
        }
        Command::Publish(args) => block_on(publish::run(args)),
        Command::Sub(args) => block_on(sub::run(args)),
    }
}
