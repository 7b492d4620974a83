//! Authentication: who a request is, and whether its route lets it in.
//!
//! A request carries `Authorization: Bearer <token>` (HTTP, Connect, gRPC
//! and gRPC-Web metadata, WebSockets) or, for browsers opening a WebSocket,
//! `?access_token=`. The layer in front of each route group finds the token
//! (hash compared in constant time), checks its role against the group's
//! [`Need`], and hands the route an [`Access`]: the route then checks
//! tenants record by record or narrows its answer.
//!
//! `--auth required|off`; unset, authentication is required once any token
//! exists (revoked ones count) and off before, which only loopback
//! listeners allow. Tokens are re-read twice a second: a new or revoked
//! token takes effect without a restart.

pub mod tokens;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use subtle::ConstantTimeEq;
use tally_pipeline::access::{Access, Role};
use tokio::sync::watch;

use tokens::{TokenError, TokenFile};

/// How often the token file is re-read.
const RELOAD_EVERY: Duration = Duration::from_millis(500);
/// A refused request's body is read up to this much, for this long.
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How often last-use times are written.
const USED_EVERY: Duration = Duration::from_secs(5);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every route but /health needs a token.
    Required,
    /// No route needs a token.
    Off,
}

/// Authentication (`[auth]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// `required` or `off`. [default: required once a token exists
    /// (`tally token create`); off before, which only loopback listeners allow]
    #[arg(long = "auth", value_enum, env = "TALLY_AUTH")]
    #[serde(default)]
    pub mode: Option<AuthMode>,
}

/// What a route group needs of a token.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// The role for reads (GET) and, unless `writes` says otherwise, writes.
    pub role: Role,
    /// The role for other methods.
    pub writes: Role,
    /// Whether the token must cover every tenant (the answer is not split
    /// by tenant: host usage, `/metrics`).
    pub all_tenants: bool,
}

impl Need {
    pub const fn role(role: Role) -> Need {
        Need {
            role,
            writes: role,
            all_tenants: false,
        }
    }

    pub const fn writes(self, role: Role) -> Need {
        Need {
            writes: role,
            ..self
        }
    }

    pub const fn all_tenants(self) -> Need {
        Need {
            all_tenants: true,
            ..self
        }
    }
}

/// A refused request.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// 401 or 403.
    pub status: StatusCode,
    /// For `/metrics`: `missing`, `unknown`, `role` or `tenant`.
    pub reason: &'static str,
    pub detail: String,
}

/// How a route group answers a refusal: JSON, or its protocol's own shape.
pub type Render = fn(&HeaderMap, &Denial) -> Response;

/// An RFC 7807 problem, for the APIs that speak it (OpenMeter's).
pub fn problem_refusal(_: &HeaderMap, d: &Denial) -> Response {
    let title = if d.status == StatusCode::UNAUTHORIZED {
        "Unauthorized"
    } else {
        "Forbidden"
    };
    let mut r = tally_pipeline::http_reply::problem(d.status, title, d.detail.clone());
    if d.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Stripe's error object, for its meter-event route.
pub fn stripe_refusal(_: &HeaderMap, d: &Denial) -> Response {
    let body = json!({"error": {"type": "invalid_request_error", "message": d.detail}});
    (d.status, Json(body)).into_response()
}

/// `{"error":"unauthorized"|"forbidden","detail":…}`.
pub fn json_refusal(_: &HeaderMap, d: &Denial) -> Response {
    let error = if d.status == StatusCode::UNAUTHORIZED {
        "unauthorized"
    } else {
        "forbidden"
    };
    let mut r = (d.status, Json(json!({"error": error, "detail": d.detail}))).into_response();
    if d.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

struct Active {
    name: Arc<str>,
    role: Role,
    tenants: Option<Arc<BTreeSet<String>>>,
    digest: [u8; 32],
    last_used: AtomicU64,
}

/// The tokens as last read.
#[derive(Default)]
struct Snapshot {
    active: Vec<Active>,
    /// Whether the file names any token, revoked ones included.
    any: bool,
    bytes: Vec<u8>,
}

impl Snapshot {
    fn from_file(file: &TokenFile, bytes: Vec<u8>, before: Option<&Snapshot>) -> Snapshot {
        let active = file
            .tokens
            .iter()
            .filter(|t| t.revoked.is_none())
            .filter_map(|t| {
                let used = before
                    .and_then(|b| b.active.iter().find(|a| &*a.name == t.name.as_str()))
                    .map(|a| a.last_used.load(Ordering::Relaxed))
                    .unwrap_or(0);
                Some(Active {
                    name: t.name.as_str().into(),
                    role: t.role,
                    tenants: (!t.tenants.is_empty())
                        .then(|| Arc::new(t.tenants.iter().cloned().collect())),
                    digest: t.digest()?,
                    last_used: AtomicU64::new(used),
                })
            })
            .collect();
        Snapshot {
            active,
            any: !file.tokens.is_empty(),
            bytes,
        }
    }
}

/// Refusals by route and reason, for `/metrics` (never the token).
type Failures = BTreeMap<(String, &'static str), u64>;

pub struct Auth {
    mode: Option<AuthMode>,
    path: PathBuf,
    used_path: PathBuf,
    tokens: RwLock<Arc<Snapshot>>,
    used_changed: AtomicBool,
    failures: Mutex<Failures>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthStartError {
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error("{listener} is not a loopback address and no API token exists, so anyone who reaches it could write and read every tenant's usage; create one with `tally token create --name NAME --role admin --data {data}`, or serve without authentication with `--auth off`")]
    OpenToTheNetwork { listener: SocketAddr, data: String },
}

impl Auth {
    /// Reads the tokens and decides whether serving on `listeners` is safe.
    pub fn start(
        args: &AuthArgs,
        state: &Path,
        data: &Path,
        listeners: &[SocketAddr],
    ) -> Result<Arc<Auth>, AuthStartError> {
        let path = tokens::tokens_path(state);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(TokenError::Io { path, source }.into()),
        };
        let file = if bytes.is_empty() {
            TokenFile::default()
        } else {
            TokenFile::parse(&path, &bytes)?
        };
        let snapshot = Snapshot::from_file(&file, bytes, None);
        if args.mode.is_none() && !snapshot.any {
            if let Some(open) = listeners.iter().find(|a| !a.ip().is_loopback()) {
                return Err(AuthStartError::OpenToTheNetwork {
                    listener: *open,
                    data: data.display().to_string(),
                });
            }
        }
        match (args.mode, snapshot.any) {
            (Some(AuthMode::Off), _) => tracing::warn!("authentication is off (--auth off): anyone who reaches a listener may write and read every tenant"),
            (Some(AuthMode::Required), false) => tracing::warn!(path = %path.display(), "authentication is required and no token exists: every route but /health refuses until `tally token create`"),
            (None, false) => tracing::info!("no API token exists and every listener is on loopback: authentication is off until `tally token create`"),
            (_, true) => tracing::info!(tokens = snapshot.active.len(), "authentication required"),
        }
        Ok(Arc::new(Auth {
            mode: args.mode,
            used_path: tokens::used_path(state),
            path,
            tokens: RwLock::new(Arc::new(snapshot)),
            used_changed: AtomicBool::new(false),
            failures: Mutex::new(BTreeMap::new()),
        }))
    }

    fn required(&self, s: &Snapshot) -> bool {
        match self.mode {
            Some(AuthMode::Off) => false,
            Some(AuthMode::Required) => true,
            None => s.any,
        }
    }

    /// The access a request's credentials give for `need`.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        need: Need,
    ) -> Result<Access, Denial> {
        let snapshot = self.tokens.read().clone();
        if !self.required(&snapshot) {
            return Ok(Access::unrestricted());
        }
        let Some(secret) = presented(headers, query) else {
            return Err(Denial {
                status: StatusCode::UNAUTHORIZED,
                reason: "missing",
                detail: "this route needs an API token: send `Authorization: Bearer <token>` (`tally token create` makes one)".into(),
            });
        };
        let d = tokens::digest(secret);
        // Every stored digest is compared, in constant time, whichever matches.
        let mut found = None;
        for a in &snapshot.active {
            if bool::from(a.digest.ct_eq(&d)) {
                found = Some(a);
            }
        }
        let Some(token) = found else {
            return Err(Denial {
                status: StatusCode::UNAUTHORIZED,
                reason: "unknown",
                detail: "the API token is not valid: unknown or revoked".into(),
            });
        };
        let now = tally_pipeline::clock::now_secs().max(0) as u64;
        if token.last_used.swap(now, Ordering::Relaxed) != now {
            self.used_changed.store(true, Ordering::Relaxed);
        }
        let role = if method == Method::GET || method == Method::HEAD {
            need.role
        } else {
            need.writes
        };
        if !token.role.allows(role) {
            return Err(Denial {
                status: StatusCode::FORBIDDEN,
                reason: "role",
                detail: format!(
                    "token {:?} has the {} role; this needs {}",
                    token.name,
                    token.role,
                    if role == Role::Admin {
                        "admin".to_string()
                    } else {
                        format!("{role} or admin")
                    }
                ),
            });
        }
        if need.all_tenants && token.tenants.is_some() {
            return Err(Denial {
                status: StatusCode::FORBIDDEN,
                reason: "tenant",
                detail: format!(
                    "token {:?} is limited to some tenants; this answer covers every tenant and needs a token of every tenant",
                    token.name
                ),
            });
        }
        Ok(Access {
            token: Some(token.name.clone()),
            role: token.role,
            tenants: token.tenants.clone(),
        })
    }

    pub fn count_failure(&self, route: &str, reason: &'static str) {
        *self
            .failures
            .lock()
            .entry((route.to_string(), reason))
            .or_default() += 1;
    }

    /// `tally_auth_failures_total` in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP tally_auth_failures_total Requests refused for want of a valid token (401) or of the token's rights (403), by route and reason.\n# TYPE tally_auth_failures_total counter\n");
        for ((route, reason), n) in self.failures.lock().iter() {
            let _ = writeln!(
                out,
                "tally_auth_failures_total{{route=\"{}\",reason=\"{reason}\"}} {n}",
                route.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
    }

    /// Re-reads the token file when it changes, and writes last-use times,
    /// until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut reload = tokio::time::interval(RELOAD_EVERY);
        let mut used = tokio::time::interval(USED_EVERY);
        let mut stopped = std::pin::pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        loop {
            tokio::select! {
                _ = reload.tick() => self.reload(),
                _ = used.tick() => self.write_used(),
                _ = &mut stopped => break,
            }
        }
        self.write_used();
    }

    fn reload(&self) {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the token file; the tokens read before stay in force");
                return;
            }
        };
        let before = self.tokens.read().clone();
        if bytes == before.bytes {
            return;
        }
        let file = if bytes.is_empty() {
            TokenFile::default()
        } else {
            match TokenFile::parse(&self.path, &bytes) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "the token file changed and cannot be read; the tokens read before stay in force");
                    return;
                }
            }
        };
        let mut next = Snapshot::from_file(&file, bytes, Some(&before));
        // Once any token existed, removing the file does not open the door.
        next.any |= before.any;
        tracing::info!(tokens = next.active.len(), "API tokens reloaded");
        *self.tokens.write() = Arc::new(next);
    }

    fn write_used(&self) {
        if !self.used_changed.swap(false, Ordering::Relaxed) {
            return;
        }
        let snapshot = self.tokens.read().clone();
        let mut used = tokens::read_used(&self.used_path);
        for a in &snapshot.active {
            let t = a.last_used.load(Ordering::Relaxed);
            if t > 0 {
                used.insert(a.name.to_string(), t);
            }
        }
        let bytes = serde_json::to_vec_pretty(&used).expect("times serialise");
        if let Err(e) = tokens::write_atomically(&self.used_path, &bytes) {
            tracing::warn!(error = %e, "cannot record when tokens were last used");
        }
    }
}

/// The secret of a request: the bearer token, or `access_token` in the
/// query of a WebSocket upgrade (browsers cannot set headers there).
fn presented<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|s| !s.is_empty());
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="))
        .filter(|s| !s.is_empty())
}

/// The layer in front of a route group.
#[derive(Clone)]
pub struct Gate {
    auth: Arc<Auth>,
    need: Need,
    render: Render,
}

impl Auth {
    pub fn gate(self: &Arc<Self>, need: Need, render: Render) -> Gate {
        Gate {
            auth: self.clone(),
            need,
            render,
        }
    }
}

/// Lets a request through with its [`Access`], or answers the refusal. A
/// 403 or gRPC `permission_denied` the route itself answers (another
/// tenant's data) is counted too.
pub async fn authenticate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let checked = gate
        .auth
        .check(req.method(), req.headers(), req.uri().query(), gate.need);
    match checked {
        Ok(access) => {
            req.extensions_mut().insert(access);
            let r = next.run(req).await;
            // gRPC answers a refusal before any message as trailers-only:
            // its status is in the headers.
            let grpc_denied = r
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"7");
            if r.status() == StatusCode::FORBIDDEN || grpc_denied {
                gate.auth.count_failure(&route, "tenant");
            }
            r
        }
        Err(denial) => {
            gate.auth.count_failure(&route, denial.reason);
            tracing::debug!(route = %route, reason = denial.reason, "request refused");
            let (parts, body) = req.into_parts();
            // Read what the client is sending (up to a bound) before
            // answering: closing on an unread body can reset the connection
            // and lose the answer.
            let _ =
                tokio::time::timeout(DRAIN_TIMEOUT, axum::body::to_bytes(body, DRAIN_LIMIT)).await;
            (gate.render)(&parts.headers, &denial)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn the_secret_comes_from_the_bearer_header_or_a_websocket_query() {
        assert_eq!(presented(&headers("Bearer tally_x"), None), Some("tally_x"));
        assert_eq!(
            presented(&headers("bearer  tally_x "), None),
            Some("tally_x")
        );
        assert_eq!(presented(&headers("Basic abc"), None), None);
        let mut ws = HeaderMap::new();
        ws.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(
            presented(&ws, Some("a=1&access_token=tally_y")),
            Some("tally_y")
        );
        // Not for plain requests: query strings end up in logs.
        assert_eq!(
            presented(&HeaderMap::new(), Some("access_token=tally_y")),
            None
        );
    }

    #[test]
    fn roles_tenants_and_revocation_decide_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let auth = Auth::start(&AuthArgs::default(), s, s, &listen).unwrap();
        // No token yet, loopback only: open.
        let open = auth.check(
            &Method::GET,
            &HeaderMap::new(),
            None,
            Need::role(Role::Admin),
        );
        assert!(open.unwrap().token.is_none());
        let ingest = tokens::create(s, "fleet", Role::Ingest, &["c1".into()]).unwrap();
        let read = tokens::create(s, "ops", Role::Read, &[]).unwrap();
        auth.reload();
        let bearer = |t: &str| headers(&format!("Bearer {t}"));
        let e = auth
            .check(
                &Method::GET,
                &HeaderMap::new(),
                None,
                Need::role(Role::Read),
            )
            .unwrap_err();
        assert_eq!((e.status, e.reason), (StatusCode::UNAUTHORIZED, "missing"));
        let e = auth
            .check(
                &Method::GET,
                &bearer("tally_nope"),
                None,
                Need::role(Role::Read),
            )
            .unwrap_err();
        assert_eq!(e.reason, "unknown");
        let e = auth
            .check(
                &Method::POST,
                &bearer(&ingest),
                None,
                Need::role(Role::Read),
            )
            .unwrap_err();
        assert_eq!((e.status, e.reason), (StatusCode::FORBIDDEN, "role"));
        let a = auth
            .check(
                &Method::POST,
                &bearer(&ingest),
                None,
                Need::role(Role::Ingest),
            )
            .unwrap();
        assert!(a.covers(Some("c1")) && !a.covers(Some("c2")));
        let e = auth
            .check(
                &Method::GET,
                &bearer(&ingest),
                None,
                Need::role(Role::Ingest).all_tenants(),
            )
            .unwrap_err();
        assert_eq!(e.reason, "tenant");
        // GET reads, POST needs the write role.
        let plan = Need::role(Role::Read).writes(Role::Admin);
        assert!(auth.check(&Method::GET, &bearer(&read), None, plan).is_ok());
        assert_eq!(
            auth.check(&Method::POST, &bearer(&read), None, plan)
                .unwrap_err()
                .reason,
            "role"
        );
        tokens::revoke(s, "ops").unwrap();
        auth.reload();
        assert_eq!(
            auth.check(&Method::GET, &bearer(&read), None, plan)
                .unwrap_err()
                .reason,
            "unknown"
        );
        // Removing the file does not turn authentication off.
        std::fs::remove_file(tokens::tokens_path(s)).unwrap();
        auth.reload();
        assert!(auth
            .check(&Method::GET, &HeaderMap::new(), None, plan)
            .is_err());
    }

    #[test]
    fn a_non_loopback_listener_without_a_token_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let any: Vec<SocketAddr> = vec!["0.0.0.0:8081".parse().unwrap()];
        let e = Auth::start(&AuthArgs::default(), s, s, &any).err().unwrap();
        let text = e.to_string();
        assert!(
            text.contains("tally token create") && text.contains("--auth off"),
            "{text}"
        );
        let off = AuthArgs {
            mode: Some(AuthMode::Off),
        };
        assert!(Auth::start(&off, s, s, &any).is_ok());
        tokens::create(s, "ops", Role::Admin, &[]).unwrap();
        assert!(Auth::start(&AuthArgs::default(), s, s, &any).is_ok());
    }
}
