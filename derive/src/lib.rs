//! tally's derive side: jobs that compute data from what is stored and
//! store it again, started next to the compactor. Each reads through the
//! read side (`tally_queries`: history, prices) and writes through the
//! pipeline or its own state files; the read side never writes.
//!
//! - `rollups/`: the rollups of each closed hour, built for the compactor
//!   by the rules of `tally_pipeline::rules`;
//! - `alerts/`: firing each alert once (the `alerts` dataset, its delivery
//!   state) and delivering it to its webhook;
//! - `budgets/`: the budgets' files, their evaluation every interval, and
//!   their threshold alerts;
//! - `anomalies/`: the scan for hours far above their 7-day baseline;
//! - `meters`: the meters of the config file and of the API;
//! - `plan_usage`: the Usage API's settings file and its snapshots.

pub mod alerts;
pub mod anomalies;
pub mod budgets;
pub mod meters;
pub mod plan_usage;
pub mod rollups;
