//! TLS between Weir's services with rustls (on ring, as tonic builds it): a server
//! certificate, and with a CA bundle, client certificates required and verified (mTLS);
//! a client that verifies the server against the CA and presents its own certificate.
//! Certificates and keys are files (mounted secrets) and are read again when they change,
//! so a rotated certificate is served without a restart; each new connection takes the
//! newest.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::RuntimeError;

/// The files of one side of a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain presented to the peer (a client's is optional).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that signs the peer's certificate: a server requires client
    /// certificates signed by it; a client checks the server's against it.
    pub ca: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(what: &str, path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Tls(format!("{what} {}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RuntimeError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad("cannot read the certificate file", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("bad PEM in", path, e))?;
    if certs.is_empty() {
        return Err(bad("no certificate in", path, "expected -----BEGIN CERTIFICATE-----"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, RuntimeError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad("cannot read a private key from", path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, RuntimeError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|e| bad("a CA certificate in", path, e))?;
    }
    Ok(roots)
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, RuntimeError> {
    let (Some(cert), Some(key_path)) = (&files.cert, &files.key) else {
        return Err(RuntimeError::Tls("a TLS server needs WEIR_TLS_CERT and WEIR_TLS_KEY".into()));
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RuntimeError::Tls(e.to_string()))?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| bad("client verifier from", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_single_cert(certs(cert)?, key(key_path)?).map_err(|e| bad("the key does not suit", cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn client_config(files: &TlsFiles) -> Result<ClientConfig, RuntimeError> {
    let Some(ca) = &files.ca else {
        return Err(RuntimeError::Tls("a TLS client needs WEIR_TLS_CA to check the server".into()));
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RuntimeError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(k)) => {
            builder.with_client_auth_cert(certs(cert)?, key(k)?).map_err(|e| bad("the key does not suit", cert, e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(RuntimeError::Tls("give both WEIR_TLS_CERT and WEIR_TLS_KEY, or neither".into())),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What the files looked like when last read: modification times and lengths.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.cert, &files.key, &files.ca]
        .into_iter()
        .map(|p| p.as_ref().and_then(|p| std::fs::metadata(p).ok()).and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// A TLS config kept in step with its files.
pub struct Reloading<C> {
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<C, RuntimeError>,
    current: RwLock<Arc<C>>,
    seen: Mutex<Stamp>,
}

/// The server side's config.
pub type ServerTls = Reloading<ServerConfig>;
/// The client side's config.
pub type ClientTls = Reloading<ClientConfig>;

impl Reloading<ServerConfig> {
    /// Reads the server's files now, naming what is wrong.
    pub fn server(files: TlsFiles) -> Result<Arc<ServerTls>, RuntimeError> {
        Reloading::load(files, server_config)
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.files.ca.is_some()
    }
}

impl Reloading<ClientConfig> {
    /// Reads the client's files now, naming what is wrong.
    pub fn client(files: TlsFiles) -> Result<Arc<ClientTls>, RuntimeError> {
        Reloading::load(files, client_config)
    }
}

impl<C: Send + Sync + 'static> Reloading<C> {
    fn load(
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<C, RuntimeError>,
    ) -> Result<Arc<Reloading<C>>, RuntimeError> {
        let seen = stamp(&files);
        let config = build(&files)?;
        Ok(Arc::new(Reloading { files, build, current: RwLock::new(Arc::new(config)), seen: Mutex::new(seen) }))
    }

    /// The newest config.
    pub fn config(&self) -> Arc<C> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the files again if they changed; a config that fails to load leaves the old
    /// one in place (a half-written secret is retried next time). Says whether it changed.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return false;
        }
        match (self.build)(&self.files) {
            Ok(c) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
                *seen = now;
                tracing::info!(files = ?self.files, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Looks at the files every `every` until `cancel` fires.
    pub fn spawn_reload(self: &Arc<Self>, every: Duration, cancel: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => { me.reload_if_changed(); }
                }
            }
        });
    }
}

/// Opens a TLS connection to `host:port`, checking the server's name against `host`.
pub async fn connect(
    tls: &ClientTls,
    host: &str,
    port: u16,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))?;
    tokio_rustls::TlsConnector::from(tls.config()).connect(name, tcp).await
}
