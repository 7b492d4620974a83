//! The `tally` binary: command line, config and wiring.

mod auth;
mod check;
mod cli;
mod collect;
mod config;
mod incomplete;
mod server;
mod status;
mod tls;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tally_queries::{OutputFormat, SqlEngine};
use tally_sinks::parquet::verify::ReadOnlyCheck;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, SqlArgs, SqlFormat, TokenArgs, TokenCommand};

/// mimalloc instead of the system allocator: with glibc's malloc, allocation
/// and free were about a fifth of the server's CPU on the gRPC ingest
/// profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the enum's position in mimalloc.h of
/// the mimalloc 3 that libmimalloc-sys 0.1 builds; its default is 1000 ms,
/// which a test checks).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Memory freed stays with the allocator for 10 s before it goes back to
/// the kernel. A flush round frees the buffered rows (tens of MiB) a few
/// times a second under load; with mimalloc's 1 s the pages went back and
/// were faulted in and zeroed again (`clear_page_erms` was ~8 % of the
/// server's CPU at 1 M metrics/s, BENCHMARKS.md). An idle server still
/// returns its memory.
fn keep_freed_memory_for_reuse() {
    // SAFETY: sets an integer option; mimalloc reads options atomically.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) }
}

fn main() -> ExitCode {
    keep_freed_memory_for_reuse();
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
            Command::Token(args) => token(args).map(|()| ExitCode::SUCCESS),
            Command::Collect(args) => collect::run(args).await.map(|()| ExitCode::SUCCESS),
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
    // Each file's checksum is checked as the query reads it; a damaged one
    // is left out, named, and the command fails.
    let check;
    let engine = match tally_sinks::Destination::parse(&location)? {
        // Object storage: the committed files under the prefix.
        Some(dest) => {
            let store = Arc::new(tally_pipeline::store::Store::new(usize::MAX));
            let dest = Arc::new(dest);
            let c = Arc::new(ReadOnlyCheck::new(dest.clone()));
            store.set_file_check(c.clone());
            check = c;
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
            let store = tally_sinks::open_files(&args.data)?;
            let c = Arc::new(ReadOnlyCheck::new(Arc::new(
                tally_sinks::Destination::Local,
            )));
            store.set_file_check(c.clone());
            check = c;
            SqlEngine::new(store).await?
        }
    };
    tally_queries::vm_billing::register_raw_views(&engine).await?;
    if !args.data.to_string_lossy().contains("://") {
        // `meter('slug')` over the meters created through the API.
        let dir = tally_sinks::parquet::layout::state_dir(&args.data).join("meters");
        let (meters, unreadable) = tally_derive::meters::stored_meters(&dir)?;
        for u in unreadable {
            tracing::error!("a meter cannot be read and is left out: {u}");
        }
        engine
            .register_meters(Arc::new(move |slug: &str| {
                meters.iter().find(|m| m.def.slug == slug).cloned()
            }))
            .await?;
    }
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
    let damaged = check.damaged();
    if !damaged.is_empty() {
        for (path, detail) in &damaged {
            eprintln!(
                "DAMAGE: {}: {detail}; its rows are not in the answer above",
                path.display()
            );
        }
        anyhow::bail!(
            "{} damaged file(s) left out of the answer: `tally check` says what they held; `tally check --repair --from BACKUP` restores them",
            damaged.len()
        );
    }
    Ok(())
}

/// `tally token create|list|revoke`.
fn token(args: TokenArgs) -> anyhow::Result<()> {
    // Where `tally serve` keeps its state for the same flags.
    let state = match &args.state_dir {
        Some(s) => s.clone(),
        None if args.data.to_string_lossy().starts_with("s3://") => {
            std::path::PathBuf::from(config::DEFAULT_OBJECT_STATE)
        }
        None => args.data.clone(),
    };
    match args.command {
        TokenCommand::Create { name, role, tenant } => {
            let secret = auth::tokens::create(&state, &name, role, &tenant)?;
            println!("{secret}");
            eprintln!(
                "token {name:?} ({role}{}) created; the secret above is shown only now",
                if tenant.is_empty() {
                    ", every tenant".to_string()
                } else {
                    format!(", tenants {}", tenant.join(", "))
                }
            );
        }
        TokenCommand::List => {
            let file = auth::tokens::TokenFile::load(&auth::tokens::tokens_path(&state))?;
            let used = auth::tokens::last_used(&state);
            println!(
                "{:<24} {:<7} {:<24} {:<21} {:<21} STATUS",
                "NAME", "ROLE", "TENANTS", "CREATED", "LAST USED"
            );
            for t in &file.tokens {
                let last = used
                    .get(&t.name)
                    .and_then(|s| chrono::DateTime::from_timestamp(*s as i64, 0))
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "never".into());
                let tenants = if t.tenants.is_empty() {
                    "*".to_string()
                } else {
                    t.tenants.join(",")
                };
                let status = match &t.revoked {
                    Some(at) => format!("revoked {at}"),
                    None => "active".into(),
                };
                println!(
                    "{:<24} {:<7} {:<24} {:<21} {:<21} {status}",
                    t.name, t.role, tenants, t.created, last
                );
            }
        }
        TokenCommand::Revoke { name } => {
            auth::tokens::revoke(&state, &name)?;
            eprintln!("token {name:?} revoked; a running server refuses it within two seconds");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: before it is set, it
    /// reads that option's documented default of 1000 ms (its neighbours in
    /// the enum default to 0 and 1), and after, the value set.
    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        // SAFETY: reads an integer option.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        keep_freed_memory_for_reuse();
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 10_000);
    }
}
