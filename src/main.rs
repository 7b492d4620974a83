//! The `tally` binary: command line, config and wiring.

mod check;
mod cli;
mod config;
mod server;
mod status;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

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
            Command::Serve(args) => {
                let config = config::Config::resolve(args.config.as_deref(), &args.components)?;
                server::serve(config).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Sql(args) => sql(args).await.map(|()| ExitCode::SUCCESS),
            Command::Check(args) => tokio::task::spawn_blocking(move || check::run(args)).await?,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let location = args.data.to_string_lossy().into_owned();
    let engine = match tally_sinks::Destination::parse(&location)? {
        // Object storage: the committed files under the prefix.
        Some(dest) => {
            let store = Arc::new(tally_pipeline::store::Store::new(usize::MAX));
            let dest = Arc::new(dest);
            let listed = {
                let (dest, store) = (dest.clone(), store.clone());
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    for d in tally_pipeline::Dataset::ALL {
                        let files = dest.list(std::path::Path::new(""), d)?;
                        store.add_existing_files(d, files.into_iter().map(|f| f.entry).collect());
                    }
                    Ok(())
                })
            };
            listed.await??;
            SqlEngine::with_object_store(store, dest.object_store()).await?
        }
        None => {
            if !args.data.exists() {
                anyhow::bail!("data directory {} does not exist", args.data.display());
            }
            SqlEngine::new(tally_sinks::open_files(&args.data)?).await?
        }
    };
    tally_queries::vm_billing::register_raw_views(&engine).await?;
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
