//! gRPC plumbing shared by the services: a listener, the standard health service
//! (`grpc.health.v1`) and server reflection so `grpcurl` works, graceful shutdown, and
//! client channels, each with its security (a guard, TLS, a token).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::server::HealthReporter;

use crate::auth::{Credentials, Guard, GuardLayer};
use crate::security::{ClientSecurity, ServerSecurity};
use crate::tls::ServerTls;
use crate::RuntimeError;

/// Binds a TCP listener (with SO_REUSEADDR, so a restarted process gets its port back at
/// once), naming the address on failure.
pub async fn bind(addr: &str) -> Result<TcpListener, RuntimeError> {
    let err = |source| RuntimeError::Bind { addr: addr.to_string(), source };
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await.map_err(err)? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let attempt = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(1024)
        });
        match attempt {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))))
}

/// The health reporter and the routes every service serves besides its own: health and
/// reflection (v1 and v1alpha) over Weir's protos and the health proto.
pub fn base_routes() -> Result<(HealthReporter, RoutesBuilder), RuntimeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(weir_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = RoutesBuilder::default();
    // Both reflection versions: grpcurl asks v1, grpcio-reflection and older tools v1alpha.
    routes.add_service(health).add_service(reflection().build_v1()?).add_service(reflection().build_v1alpha()?);
    Ok((reporter, routes))
}

/// Serves `routes` on `listener` until `cancel` fires, then drains in-flight calls. Every
/// call passes `security`'s guard first; with its TLS, connections are TLS (client
/// certificates required when it has a CA), each handshake on its own task so a slow
/// client holds up no other.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    security: ServerSecurity,
    cancel: CancellationToken,
) -> Result<(), RuntimeError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, tls = security.tls.is_some(), auth = security.guard.enabled(), "gRPC listening");
    let builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A span per call, a child of the caller's trace (only when traces are exported).
        .trace_fn(crate::telemetry::server_span)
        // Outermost, so the guard's refusals are counted too.
        .layer(crate::metrics::MetricsLayer)
        .layer(GuardLayer(security.guard.clone()))
        .add_routes(routes);
    match security.tls {
        None => {
            // tonic ignores the builder's tcp_nodelay for a listener it did not bind, so it
            // is set here: with Nagle on, a small answer can wait for the peer's delayed ACK.
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            builder.serve_with_incoming_shutdown(incoming, cancel.cancelled_owned()).await?;
        }
        Some(tls) => {
            let (tx, rx) = mpsc::channel(64);
            let accept = tokio::spawn(accept_tls(listener, tls, security.guard, tx, cancel.clone()));
            builder.serve_with_incoming_shutdown(ReceiverStream::new(rx), cancel.cancelled_owned()).await?;
            accept.abort();
        }
    }
    Ok(())
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes under way at once; connections past it wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

async fn accept_tls(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    guard: Guard,
    tx: mpsc::Sender<Result<TlsConn, std::io::Error>>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        tls.reload_if_changed();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let (tx, guard) = (tx.clone(), guard.clone());
        tokio::spawn(async move {
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(slot);
            match result {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                // Closed before saying anything (a TCP probe, a port scan): not a caller.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%peer, "connection closed before its TLS handshake");
                }
                Ok(Err(e)) => guard.handshake_refused(&peer.to_string(), &e.to_string()).await,
                Err(_) => guard.handshake_refused(&peer.to_string(), "the TLS handshake timed out").await,
            }
        });
    }
}

/// A client channel: the gRPC channel with the caller's token on every call.
pub type AuthedChannel = InterceptedService<Channel, Credentials>;

/// A client channel to `url` (e.g. `http://127.0.0.1:50051`) that connects on first use and
/// reconnects after failures, so a service can start before the one it calls. With
/// `security`'s TLS the URL must be `https://`; each new connection takes the newest
/// certificates.
pub fn channel(url: &str, security: &ClientSecurity) -> Result<AuthedChannel, RuntimeError> {
    let https = url.starts_with("https://");
    let plain_url = match (&security.tls, https) {
        (Some(_), true) => url.replacen("https://", "http://", 1),
        (Some(_), false) => {
            return Err(RuntimeError::Endpoint(
                url.to_string(),
                "TLS is configured (WEIR_TLS_CA), so use https://".into(),
            ))
        }
        (None, true) => {
            return Err(RuntimeError::Endpoint(
                url.to_string(),
                "an https:// URL needs WEIR_TLS_CA to check the server".into(),
            ))
        }
        (None, false) => url.to_string(),
    };
    let endpoint = Endpoint::from_shared(plain_url.clone())
        .map_err(|e| RuntimeError::Endpoint(url.to_string(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel = match &security.tls {
        None => endpoint.connect_lazy(),
        Some(tls) => {
            let tls = tls.clone();
            // tonic sees plain HTTP/2 over a stream this connector has already secured.
            endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: tonic::codegen::http::Uri| {
                let tls = tls.clone();
                async move {
                    let host = uri.host().unwrap_or_default().to_string();
                    let port = uri.port_u16().unwrap_or(443);
                    tls.reload_if_changed();
                    let conn = crate::tls::connect(&tls, &host, port).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(conn))
                }
            }))
        }
    };
    Ok(InterceptedService::new(channel, security.credentials.clone()))
}
