//! Budgets: a limit on a metric per period for a scope, with threshold
//! alerts (`/v1/budgets`).
//!
//! - `model.rs`: a budget, its checks, its periods;
//! - `evaluate.rs`: what each budget used, from history's hourly rows (a
//!   read, like a bill);
//! - `api.rs`: the routes, which reach the budgets through [`BudgetBook`].
//!
//! The budgets' files, the evaluation every `--budget-interval` and the
//! threshold alerts are the derive side's (`tally_derive::budgets`).

pub mod api;
pub mod evaluate;
pub mod model;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::sql::QueryError;
use evaluate::{BudgetState, GroupCache, ScopeIndex};
use model::Budget;

/// The outcome of an evaluation.
#[derive(Debug, Default)]
pub struct Evaluated {
    pub states: Vec<BudgetState>,
    pub index: ScopeIndex,
    /// The rows it was computed from.
    pub rows: GroupCache,
    /// When it started (nanoseconds): it holds every record acknowledged
    /// before then.
    pub at: i64,
}

impl Evaluated {
    pub fn new(states: Vec<BudgetState>, rows: GroupCache, at: i64) -> Evaluated {
        Evaluated {
            index: ScopeIndex::new(states.iter().map(|s| s.budget.as_ref())),
            states,
            rows,
            at,
        }
    }
}

/// The budgets as the routes see them.
#[async_trait]
pub trait BudgetBook: Send + Sync {
    /// The last evaluation.
    fn last(&self) -> Arc<Evaluated>;

    fn get(&self, id: &str) -> Option<Arc<Budget>>;

    /// Stores a new budget (durably) and evaluates it; returns its state
    /// and when its rows were read.
    async fn create(&self, budget: Budget) -> Result<(BudgetState, i64), BudgetError>;

    /// Deletes a budget; `false` when there is none of that id.
    async fn delete(&self, id: &str) -> Result<bool, BudgetError>;

    /// An evaluation that holds every record acknowledged before this call:
    /// one already made since, or a new one.
    async fn fresh(&self) -> Result<Arc<Evaluated>, BudgetError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("writing budget state {0}: {1}")]
    State(PathBuf, std::io::Error),
    #[error(transparent)]
    Query(#[from] QueryError),
}
