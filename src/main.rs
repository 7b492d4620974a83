//! The `tally` binary: command line, config and wiring.

mod cli;
mod config;
mod server;
mod status;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tally_queries::{OutputFormat, SqlEngine};
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, SqlArgs, SqlFormat};

/// mimalloc instead of the system allocator: with glibc's malloc, allocation
/// and free were about a fifth of the server's CPU on the gRPC ingest
/// profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => server::serve(config::Config::resolve(*args)?).await,
            Command::Sql(args) => sql(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    if !args.data.exists() {
        anyhow::bail!("data directory {} does not exist", args.data.display());
    }
    let store = tally_sinks::open_files(&args.data)?;
    let engine = SqlEngine::new(store).await?;
    let batches = engine.query(&args.query).await?;
    let format = match args.format {
        SqlFormat::Table => OutputFormat::Table,
        SqlFormat::Csv => OutputFormat::Csv,
        SqlFormat::Json => OutputFormat::Json,
    };
    let mut out = format.write(&batches)?;
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    std::io::stdout().write_all(&out)?;
    Ok(())
}
