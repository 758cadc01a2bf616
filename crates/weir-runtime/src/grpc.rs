//! gRPC plumbing shared by the services: a listener, the standard health service
//! (`grpc.health.v1`) and server reflection so `grpcurl` works, graceful shutdown, and
//! client channels.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::server::HealthReporter;

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
/// reflection over Weir's protos and the health proto.
pub fn base_routes() -> Result<(HealthReporter, RoutesBuilder), RuntimeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weir_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut routes = RoutesBuilder::default();
    routes.add_service(health).add_service(reflection);
    Ok((reporter, routes))
}

/// Serves `routes` on `listener` until `cancel` fires, then drains in-flight calls.
pub async fn serve(listener: TcpListener, routes: Routes, cancel: CancellationToken) -> Result<(), RuntimeError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "gRPC listening");
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), cancel.cancelled_owned())
        .await?;
    Ok(())
}

/// A client channel to `url` (e.g. `http://127.0.0.1:50051`) that connects on first use and
/// reconnects after failures, so a service can start before the one it calls.
pub fn channel(url: &str) -> Result<Channel, RuntimeError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| RuntimeError::Endpoint(url.to_string(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}
