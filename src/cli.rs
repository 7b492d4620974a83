//! Command line: `tally serve`, `tally sql`, `tally check` and `tally token`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// tally — usage metering: durable ingest into Parquet, queried with SQL.
///
/// Every setting of `tally serve` comes, in this order of precedence, from
/// its flag, its environment variable, the config file (`tally.toml` in the
/// working directory, or `--config`), or the built-in default.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP ingest, billing.v1, NATS, SQL and the read APIs, /usage, /health and /metrics.
    Serve(Box<ServeArgs>),
    /// Run one read-only SQL query over a data directory, offline.
    Sql(SqlArgs),
    /// Verify a data directory offline: every WAL frame, every state file and
    /// every Parquet file (checksum, footer, schema, rows), raw and rollup.
    /// Exits 1 on damage.
    Check(CheckArgs),
    /// Create, list and revoke API tokens (`_tally/tokens.json` in the state directory).
    Token(TokenArgs),
    /// Send a coding agent's usage from its local logs to a tally server
    /// (`claude-code`, `codex`); remembers how far each file was read.
    Collect(crate::collect::CollectArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Data directory of the server the tokens are for.
    #[arg(long, env = "TALLY_DATA", default_value = crate::config::DEFAULT_DATA, global = true)]
    pub data: PathBuf,

    /// The server's state directory. [default: the data directory]
    #[arg(long, env = "TALLY_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (once: only its hash is kept).
    Create {
        /// A name to list and revoke it by.
        #[arg(long)]
        name: String,
        /// ingest (writes usage, reads nothing), read (the read APIs and
        /// WebSockets) or admin (everything, with /v1/sql).
        #[arg(long)]
        role: tally_pipeline::access::Role,
        /// Limit the token to this tenant (repeatable): microdao_id, app_id
        /// for chat events, customer_id for VMs. [default: every tenant]
        #[arg(long)]
        tenant: Vec<String>,
    },
    /// List tokens: names, roles, tenants, created, last used (never secrets).
    List,
    /// Revoke a token: a running server refuses it within two seconds.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Data directory to check.
    #[arg(long, env = "TALLY_DATA", default_value = crate::config::DEFAULT_DATA)]
    pub data: PathBuf,

    /// The node's state directory (WAL, checkpoint, quarantine). [default: the data directory]
    #[arg(long, env = "TALLY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The node id whose files rebuild an unreadable checkpoint (--repair). [default: the host name]
    #[arg(long, env = "TALLY_NODE_ID")]
    pub node_id: Option<String>,

    /// Do what start-up does with damage, without serving: copy damaged WAL
    /// segments into the quarantine, move unreadable and foreign files there,
    /// and record the reports.
    /// With --from, a damaged file (or one the server quarantined) is first
    /// replaced by its copy there, when the copy's checksum matches the
    /// recorded one; files written before checksums are given one.
    #[arg(long)]
    pub repair: bool,

    /// Where --repair finds intact copies: a backup of the data directory,
    /// or the bucket of a cluster (`s3://bucket/prefix`, with the usual
    /// AWS_* variables).
    #[arg(long, requires = "repair", value_name = "DIR|s3://…")]
    pub from: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Settings file (a section per component). [default: ./tally.toml when it exists]
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub components: crate::config::Components,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SqlFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Data directory to read.
    #[arg(long, env = "TALLY_DATA", default_value = crate::config::DEFAULT_DATA)]
    pub data: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SqlFormat,

    /// The query, e.g. "SELECT model, count(*) FROM usage_llm GROUP BY model".
    pub query: String,
}
