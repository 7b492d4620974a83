//! tally's read side, one folder per part:
//!
//! - `api_v1/`: OpenMeter's API (`/api/v1/…`): the events sent;
//! - `sql/`: the DataFusion engine, its catalogue (each dataset one table
//!   over its Parquet files and the live buffer), output formats, `/v1/sql`;
//! - `history/`: stored hourly rollups and raw records put together, and the
//!   SQL that builds the rollups;
//! - `vm_billing/`: `/v1/billing/vm-usage` and the `vm_usage_*` tables;
//! - `internal_usage/`: `/internal/usage/*` (README "Usage engine API");
//! - `api_usage/`: the Usage API (README "Usage API"): routes, stats, snapshots,
//!   stream, its config file;
//! - `usage/`: the `/usage` WebSocket of README "Host telemetry and the /usage WebSocket" (host and ingest rates);
//! - `budgets/`: `/v1/budgets`: limits per period and scope, evaluated from
//!   the hourly rows, with threshold alerts;
//! - `anomalies/`: hours far above their 7-day baseline, `/v1/anomalies`;
//! - `dashboard/`: the browser dashboard at `/` and `/ui/…` (embedded,
//!   compressed assets that read the APIs above);
//! - `alerts/`: firing each alert once (the `alerts` dataset, webhooks with
//!   signatures and retries, `/v1/alerts`, the alert stream).

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
