//! Listeners: accepts TCP connections, runs the TLS handshake (each on its own task, with a
//! deadline, so a slow client never holds up others), tells the app who is connected (peer
//! address, verified client certificate) and serves HTTP/1.1 and HTTP/2 until shutdown, then
//! lets in-flight requests finish.
//!
//! Several instances ("sites") may share one address. Over TLS the SNI name picks the site
//! before the handshake (its certificate, its client-certificate policy), and every request's
//! Host must then name that same site: a client cannot pass one site's handshake and talk to
//! another. Over plain HTTP the Host header picks the site. A site without a host name takes
//! names no other site claims; a request for a name nobody serves gets 421.

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

/// An instance as served on one address.
#[derive(Clone)]
pub struct Site {
    pub name: String,
    /// The name clients reach it by (lowercase); `None` takes every name no other site claims.
    pub hostname: Option<String>,
    pub app: Router,
    /// Set on TLS listeners (then on every site of the address).
    pub tls: Option<Arc<TlsConfig>>,
}

/// The sites of one address.
pub struct Sites(Vec<Site>);

impl Sites {
    /// Sites sharing one address: all over TLS or none, and no host name twice.
    pub fn new(sites: Vec<Site>) -> Result<Sites, String> {
        let names = |f: &dyn Fn(&Site) -> bool| {
            sites
                .iter()
                .filter(|s| f(s))
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if sites.iter().any(|s| s.tls.is_some()) && sites.iter().any(|s| s.tls.is_none()) {
            return Err(format!(
                "instances {} (TLS) and {} (plain HTTP) cannot share one address",
                names(&|s| s.tls.is_some()),
                names(&|s| s.tls.is_none())
            ));
        }
        for (i, a) in sites.iter().enumerate() {
            if let Some(b) = sites[..i].iter().find(|b| b.hostname == a.hostname) {
                let host = match &a.hostname {
                    Some(h) => format!("host name {h:?}"),
                    None => "no host name".to_owned(),
                };
                return Err(format!(
                    "instances {} and {} share one address with {host}: give each its own instance.hostname",
                    b.name, a.name
                ));
            }
        }
        Ok(Sites(sites))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Site> {
        self.0.iter()
    }

    /// The site serving `host` (a Host header or SNI name; `None` when absent).
    fn find(&self, host: Option<&str>) -> Option<usize> {
        if self.0.len() == 1 {
            return Some(0);
        }
        let host = host.map(normalize_host);
        host.and_then(|h| {
            self.0
                .iter()
                .position(|s| s.hostname.as_deref() == Some(h.as_str()))
        })
        .or_else(|| self.0.iter().position(|s| s.hostname.is_none()))
    }
}

/// The host part of a Host header or authority, lowercase, without port or trailing dot.
fn normalize_host(host: &str) -> String {
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None if host.matches(':').count() == 1 => host.split(':').next().unwrap_or(host),
        None => host,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The hosts a request names: its authority (absolute or HTTP/2 form) and its Host header.
fn request_hosts<B>(r: &Request<B>) -> [Option<&str>; 2] {
    [
        r.uri().authority().map(|a| a.as_str()),
        r.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    ]
}

/// Serves `sites` on `listener` until `stop` turns true, then waits for in-flight requests.
pub async fn serve(listener: TcpListener, sites: Arc<Sites>, stop: watch::Receiver<bool>) {
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
        let task = (sites.clone(), builder.clone(), stop.clone(), alive.clone());
        tokio::spawn(async move {
            let (sites, builder, stop, _alive) = task;
            let tls = sites.0.iter().any(|s| s.tls.is_some());
            let (io, certificate, fixed): (Box<dyn Io>, _, _) = match tls {
                false => (Box::new(tcp), None, None),
                true => match handshake(&sites, tcp).await {
                    Ok((stream, certificate, site)) => (Box::new(stream), certificate, Some(site)),
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            let connection = Connection { peer, certificate };
            let service = tower::service_fn(move |mut r: Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(connection.clone());
                // Every name the request gives, and the TLS handshake's, must lead to one site.
                let hosts = request_hosts(&r);
                let named = hosts.iter().flatten().map(|h| sites.find(Some(h)));
                let site = match hosts.iter().all(Option::is_none) {
                    true => sites.find(None),
                    false => named.reduce(|a, b| if a == b { a } else { None }).flatten(),
                };
                let app = match (site, fixed) {
                    (Some(s), None) => Ok(sites.0[s].app.clone()),
                    (Some(s), Some(f)) if s == f => Ok(sites.0[s].app.clone()),
                    _ => Err(hosts
                        .iter()
                        .flatten()
                        .map(|h| normalize_host(h))
                        .collect::<Vec<_>>()),
                };
                async move {
                    match app {
                        Ok(app) => app.oneshot(r.map(axum::body::Body::new)).await,
                        Err(hosts) => Ok(misdirected(&hosts.join(", "))),
                    }
                }
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

/// 421: no site on this address serves `host`.
fn misdirected(host: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({"errors": [{
        "code": "DENIED",
        "message": format!("no registry instance serves host {host:?} on this connection"),
    }]});
    (
        http::StatusCode::MISDIRECTED_REQUEST,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Runs the TLS handshake with a deadline, with the certificate and client-certificate policy
/// of the site the SNI name picks; returns the stream, the verified client certificate if one
/// was presented, and the site.
async fn handshake(
    sites: &Sites,
    tcp: TcpStream,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        Option<Arc<ClientCertificate>>,
        usize,
    ),
    String,
> {
    let handshake = async {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = acceptor.await.map_err(|e| e.to_string())?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let site = sites
            .find(sni.as_deref())
            .ok_or_else(|| format!("no instance serves {sni:?}"))?;
        let config = match &sites.0[site].tls {
            Some(tls) => tls.current(),
            None => return Err("not a TLS site".to_owned()),
        };
        let stream = start.into_stream(config).await.map_err(|e| e.to_string())?;
        Ok((stream, site))
    };
    let (stream, site) = match tokio::time::timeout(HANDSHAKE_DEADLINE, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("timed out".into()),
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|der| Arc::new(ClientCertificate::from_der(der)));
    Ok((stream, certificate, site))
}

/// A byte stream a connection is served over: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, host: Option<&str>) -> Site {
        Site {
            name: name.into(),
            hostname: host.map(str::to_owned),
            app: Router::new(),
            tls: None,
        }
    }

    #[test]
    fn hosts_pick_sites() {
        assert_eq!(normalize_host("Reg.Example.com:5000"), "reg.example.com");
        assert_eq!(normalize_host("[::1]:5000"), "::1");
        assert_eq!(normalize_host("reg.example.com."), "reg.example.com");
        let one = Sites::new(vec![site("a", Some("a.test"))]).unwrap();
        assert_eq!(
            one.find(Some("other")),
            Some(0),
            "a lone site takes every name"
        );
        let two = Sites::new(vec![site("a", Some("a.test")), site("b", Some("b.test"))]).unwrap();
        assert_eq!(two.find(Some("B.test:443")), Some(1));
        assert_eq!(two.find(Some("c.test")), None);
        assert_eq!(two.find(None), None);
        let catch_all = Sites::new(vec![site("a", Some("a.test")), site("d", None)]).unwrap();
        assert_eq!(catch_all.find(Some("c.test")), Some(1));
        assert_eq!(catch_all.find(Some("a.test")), Some(0));
        assert!(Sites::new(vec![site("a", None), site("b", None)]).is_err());
        assert!(Sites::new(vec![site("a", Some("x")), site("b", Some("x"))]).is_err());
    }
}
