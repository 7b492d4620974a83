//! TLS on every listener: `--tls-cert` and `--tls-key` (PEM), ALPN `h2` and
//! `http/1.1` so gRPC, Connect, HTTP and WebSockets share one port; with
//! `--tls-client-ca`, clients must present a certificate signed by that CA
//! (mTLS, as metald fleets do with SPIFFE certificates).
//!
//! The files are checked every two seconds; when one changes, the next
//! connections use the new certificate (a pair that does not load is
//! reported and the previous one kept).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// How often the certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections get this long to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS (`[tls]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// Certificate chain (PEM): serve every listener over TLS. Needs --tls-key.
    #[arg(long, env = "TALLY_TLS_CERT", requires = "tls_key")]
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "TALLY_TLS_KEY", requires = "tls_cert")]
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must be signed by (mTLS): clients
    /// without one are refused in the handshake.
    #[arg(long, env = "TALLY_TLS_CLIENT_CA")]
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Settings(String),
}

/// The certificate files and the configuration they make, reloaded when
/// they change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Vec<Option<SystemTime>>)>,
}

#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_ca.as_deref());
        v
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let pem_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls::pki_types::pem::Error| TlsError::Pem {
                path: path.clone(),
                detail: e.to_string(),
            }
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(pem_err(&self.cert))?
            .collect::<Result<_, _>>()
            .map_err(pem_err(&self.cert))?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: self.cert.clone(),
                detail: "no CERTIFICATE block".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(pem_err(&self.key))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(pem_err(ca))? {
                    roots
                        .add(c.map_err(pem_err(ca))?)
                        .map_err(|e| TlsError::Pem {
                            path: ca.clone(),
                            detail: e.to_string(),
                        })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Config(format!("--tls-client-ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl Tls {
    /// `None` when TLS is not configured.
    pub fn start(args: &TlsArgs) -> Result<Option<Arc<Tls>>, TlsError> {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) if args.tls_client_ca.is_some() => {
                return Err(TlsError::Settings(
                    "--tls-client-ca needs --tls-cert and --tls-key".into(),
                ))
            }
            (None, None) => return Ok(None),
            _ => {
                return Err(TlsError::Settings(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        };
        let files = TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca.clone(),
        };
        let stamps = files.stamps();
        let config = files.load()?;
        tracing::info!(cert = %files.cert.display(), client_certificates = files.client_ca.is_some(), "serving over TLS");
        Ok(Some(Arc::new(Tls {
            files,
            current: RwLock::new((config, stamps)),
        })))
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current.read().0.clone()
    }

    /// Reloads the files when they change, until `stop`.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        let mut stopped = std::pin::pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        loop {
            tokio::select! {
                _ = tick.tick() => self.reload_if_changed(),
                _ = &mut stopped => return,
            }
        }
    }

    fn reload_if_changed(&self) {
        let stamps = self.files.stamps();
        if stamps == self.current.read().1 {
            return;
        }
        match self.files.load() {
            Ok(config) => {
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                *self.current.write() = (config, stamps);
            }
            Err(e) => {
                // Keep the stamps old: a pair caught half-written loads on
                // the next check.
                tracing::error!(error = %e, "the TLS files changed and do not load; the previous certificate stays in use");
            }
        }
    }
}

/// Serves `app` over TLS on `listener` until `stop`, then lets open
/// connections finish (up to ten seconds).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<Tls>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stopped = std::pin::pin!(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        // No Nagle delay on small answers (it cost 40 ms a request before
        // acknowledgements came back), as the plain listener has too.
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    let app = app.clone();
                    async move {
                        Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {}))
                    }
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open TLS connections did not finish within ten seconds of shutdown");
    }
    Ok(())
}
