//! Listeners: accepts TCP connections, runs the TLS handshake (each on its own task, with a
//! deadline, so a slow client never holds up others), tells the app who is connected (peer
//! address, verified client certificate) and serves HTTP/1.1 and HTTP/2 until shutdown, then
//! lets in-flight requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use registry_auth::tls::{ClientCertificate, TlsConfig};
use registry_http::guard::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` turns true, then waits for
/// in-flight requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsConfig>>,
    app: Router,
    stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder);
    // Every connection task holds a sender; when all are gone, the receiver sees the end.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(stop.clone()) => break,
        };
        let _ = tcp.set_nodelay(true);
        let task = (
            tls.clone(),
            app.clone(),
            builder.clone(),
            stop.clone(),
            alive.clone(),
        );
        tokio::spawn(async move {
            let (tls, app, builder, stop, _alive) = task;
            let (io, certificate): (Box<dyn Io>, _) = match tls {
                None => (Box::new(tcp), None),
                Some(tls) => match handshake(&tls, tcp).await {
                    Ok((stream, certificate)) => (Box::new(stream), certificate),
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            let connection = Connection { peer, certificate };
            let service = app.map_request(move |mut r: Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(connection.clone());
                r
            });
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(io),
                TowerToHyperService::new(service),
            );
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped(stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_done.recv().await;
}

/// Resolves once the stop flag is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the TLS handshake with a deadline; returns the stream and the verified client
/// certificate, if one was presented.
async fn handshake(
    tls: &TlsConfig,
    tcp: TcpStream,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        Option<Arc<ClientCertificate>>,
    ),
    String,
> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let stream = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out".into()),
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|der| Arc::new(ClientCertificate::from_der(der)));
    Ok((stream, certificate))
}

/// A byte stream a connection is served over: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}
