//! Who may write and read what: the role and tenants a request's token
//! allows ([`Access`]), the tenant of a record, and per-tenant rate limits
//! ([`limits`]).
//!
//! The server's auth layer decides a request's [`Access`] from its token and
//! hands it to the route; sources check each record's tenant against it, and
//! read APIs narrow their answers to its tenants.

pub mod limits;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::record::Value;
use crate::{Dataset, Record};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes usage (HTTP ingest, `/usage/ingest`, billing.v1); reads nothing.
    Ingest,
    /// Uses the read APIs and the WebSockets.
    Read,
    /// Everything, including `/v1/sql` and token management.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Ingest, Role::Read, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may use a route that needs `need`.
    pub fn allows(self, need: Role) -> bool {
        self == Role::Admin || self == need
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?}: use ingest, read or admin"))
    }
}

/// What one request may do, set on every request by the server's auth
/// layer (the routes refuse to run without it).
#[derive(Debug, Clone)]
pub struct Access {
    /// The token's name; `None` when authentication is off.
    pub token: Option<Arc<str>>,
    pub role: Role,
    /// The tenants the token is limited to; `None`: every tenant.
    pub tenants: Option<Arc<BTreeSet<String>>>,
}

/// The namespace of a token of every tenant.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A request that asks for what its token does not cover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

impl Access {
    /// Everything: authentication is off.
    pub fn unrestricted() -> Access {
        Access {
            token: None,
            role: Role::Admin,
            tenants: None,
        }
    }

    /// Whether the token covers every tenant.
    pub fn all_tenants(&self) -> bool {
        self.tenants.is_none()
    }

    /// Whether the token covers `tenant` (a record without a tenant is
    /// covered only by tokens of every tenant).
    pub fn covers(&self, tenant: Option<&str>) -> bool {
        match &self.tenants {
            None => true,
            Some(set) => tenant.is_some_and(|t| set.contains(t)),
        }
    }

    /// How messages name the token.
    pub fn who(&self) -> String {
        match &self.token {
            Some(name) => format!("token {name:?}"),
            None => "this request".to_string(),
        }
    }

    /// Checks a read's tenant filter (`column` names the parameter): a
    /// token may ask for its own tenants only. Without a filter the answer
    /// is narrowed to [`Access::tenants`].
    pub fn check_filter(&self, column: &str, asked: Option<&str>) -> Result<(), Forbidden> {
        match asked {
            Some(t) if !self.covers(Some(t)) => Err(Forbidden(format!(
                "{} may not read tenant {t:?} ({column}); it covers {}",
                self.who(),
                self.tenant_list()
            ))),
            _ => Ok(()),
        }
    }

    /// Why this token may not write a record of `tenant` (in `column`), or
    /// `None` when it may.
    pub fn refuse_write(&self, column: &str, tenant: Option<&str>) -> Option<String> {
        if self.covers(tenant) {
            return None;
        }
        Some(match tenant {
            Some(t) => format!(
                "{} may not write for tenant {t:?} ({column}); it covers {}",
                self.who(),
                self.tenant_list()
            ),
            None => format!(
                "{} is limited to {}: {column} is required",
                self.who(),
                self.tenant_list()
            ),
        })
    }

    /// Why this token may not write `r` (its tenant is another's), or
    /// `None` when it may.
    pub fn refuse_record(&self, r: &Record) -> Option<String> {
        self.refuse_row(r.dataset, tenant_of(r))
    }

    /// [`Access::refuse_record`] for a row of `dataset` whose tenant
    /// column holds `tenant`.
    pub fn refuse_row(&self, dataset: Dataset, tenant: Option<&str>) -> Option<String> {
        if self.all_tenants() {
            return None;
        }
        let column = dataset
            .tenant_column()
            .map_or("tenant", |c| dataset.columns()[c].name);
        self.refuse_write(column, tenant)
    }

    /// The tenant a token's CloudEvents and meters belong to (OpenMeter's
    /// namespace): its one tenant, or [`DEFAULT_NAMESPACE`] for a token of
    /// every tenant. A token of several tenants has none.
    pub fn namespace(&self) -> Result<String, Forbidden> {
        match &self.tenants {
            None => Ok(DEFAULT_NAMESPACE.to_string()),
            Some(set) if set.len() == 1 => Ok(set.iter().next().cloned().unwrap_or_default()),
            Some(_) => Err(Forbidden(format!(
                "this token covers {}; events and meters need a token of one tenant (or of every tenant, for {DEFAULT_NAMESPACE:?})",
                self.tenant_list()
            ))),
        }
    }

    fn tenant_list(&self) -> String {
        match &self.tenants {
            None => "every tenant".to_string(),
            Some(set) => {
                let names: Vec<String> = set.iter().map(|t| format!("{t:?}")).collect();
                names.join(", ")
            }
        }
    }
}

/// The tenant of a record: the value of its dataset's tenant column.
pub fn tenant_of(r: &Record) -> Option<&str> {
    let c = r.dataset.tenant_column()?;
    match &r.values[c] {
        Value::Str(s) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dataset, RecordBuilder};

    fn scoped(tenants: &[&str]) -> Access {
        Access {
            token: Some("t".into()),
            role: Role::Ingest,
            tenants: Some(Arc::new(tenants.iter().map(|t| t.to_string()).collect())),
        }
    }

    fn chat(app: &str) -> Record {
        let mut b = RecordBuilder::new(Dataset::UsageChatSummary);
        b.set("event_id", "e")
            .set("timestamp", Value::Ts(1))
            .set("chat_id", "c")
            .set("app_id", app)
            .set("user_id", "u")
            .set("workflow_name", "w")
            .set("prompt_tokens", 1i64)
            .set("completion_tokens", 1i64)
            .set("total_tokens", 2i64);
        b.build().unwrap()
    }

    #[test]
    fn roles_allow_their_own_routes_and_admin_allows_all() {
        assert!(Role::Ingest.allows(Role::Ingest));
        assert!(!Role::Ingest.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Ingest));
        assert!(!Role::Read.allows(Role::Admin));
        for need in Role::ALL {
            assert!(Role::Admin.allows(need));
        }
        assert_eq!("read".parse::<Role>(), Ok(Role::Read));
        assert!("owner"
            .parse::<Role>()
            .unwrap_err()
            .contains("ingest, read or admin"));
    }

    #[test]
    fn a_scoped_token_writes_its_tenants_only_and_names_the_other() {
        let a = scoped(&["app_a"]);
        assert_eq!(a.refuse_record(&chat("app_a")), None);
        let refused = a.refuse_record(&chat("app_b")).unwrap();
        assert!(refused.contains("\"app_b\""), "{refused}");
        assert!(refused.contains("app_id"), "{refused}");
        assert_eq!(Access::unrestricted().refuse_record(&chat("x")), None);
    }

    #[test]
    fn read_filters_are_checked_against_the_tenants() {
        let a = scoped(&["m1", "m2"]);
        assert!(a.check_filter("microdao_id", Some("m2")).is_ok());
        assert!(a.check_filter("microdao_id", None).is_ok());
        let e = a.check_filter("microdao_id", Some("m3")).unwrap_err();
        assert!(
            e.0.contains("\"m3\"") && e.0.contains("\"m1\", \"m2\""),
            "{e}"
        );
        assert!(!a.covers(None));
        assert!(Access::unrestricted().covers(None));
    }
}
