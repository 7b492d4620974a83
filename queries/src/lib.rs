//! tally's read side, one folder per route it serves. It only reads: what
//! computes and stores derived data is `tally_derive`, and the routes that
//! show derived state read it through a type of their folder the derive side
//! fills (`tests/layout.rs` checks that nothing here writes).
//!
//! - `api_v1/`: OpenMeter's API (`/api/v1/…`): the events sent, meters and
//!   their queries;
//! - `sql/`: the DataFusion engine, its catalogue (each dataset one table
//!   over its Parquet files and the live buffer), output formats, `/v1/sql`;
//! - `history/`: stored hourly rollups and raw records put together, read by
//!   the rules of `tally_pipeline::rules`;
//! - `vm_billing/`: `/v1/billing/vm-usage` and the `vm_usage_*` tables;
//! - `internal_usage/`: `/internal/usage/*` (README "Usage engine API");
//! - `api_usage/`: the Usage API (README "Usage API"): routes, stats, stream,
//!   the snapshots read back; its settings and snapshots are kept through
//!   `PlanState`;
//! - `usage/`: the `/usage` WebSocket of README "Host telemetry and the /usage WebSocket" (host and ingest rates);
//! - `budgets/`: `/v1/budgets`: the model, what a budget used (from the
//!   hourly rows), the routes over `BudgetBook`;
//! - `anomalies/`: `/v1/anomalies`, from the `AnomalyBoard`;
//! - `dashboard/`: the browser dashboard at `/` and `/ui/…` (embedded,
//!   compressed assets that read the APIs above);
//! - `alerts/`: `/v1/alerts` and its stream, from the `AlertFeed`.

pub mod alerts;
pub mod anomalies;
pub mod api_usage;
pub mod api_v1;
pub mod budgets;
pub mod dashboard;
pub mod history;
pub mod http;
pub mod internal_usage;
pub mod prices;
pub mod sql;
pub mod usage;
pub mod vm_billing;

pub use sql::format::OutputFormat;
pub use sql::{QueryError, SqlEngine};
