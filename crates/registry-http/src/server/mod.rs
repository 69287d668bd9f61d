//! The server: accepts TCP connections within the caps of [`ConnectionSettings`], runs the TLS
//! handshake (each on its own task, with a deadline, so a slow client never holds up others),
//! tells the app who is connected (peer address, verified client certificate) and serves
//! HTTP/1.1 and HTTP/2 until shutdown, then lets in-flight requests finish for the shutdown
//! timeout and closes what is left. What bounds each connection and how it closes is in
//! `conn`; how request bodies left unread by an early answer are drained is in `body`.
//!
//! Several instances ("sites") may share one address. Over TLS the SNI name picks the site
//! before the handshake (its certificate, its client-certificate policy), and every request's
//! Host must then name that same site: a client cannot pass one site's handshake and talk to
//! another. Over plain HTTP the Host header picks the site. A site without a host name takes
//! names no other site claims; a request for a name nobody serves gets 421.
//!
//! The sites of an address can be replaced while it serves (a configuration reload, see
//! [`serve`]): each new connection takes the sites as they are when it is accepted (bounds,
//! certificate, client-certificate policy), and each request the app of its site as it is
//! when the request arrives, so a reload applies to the next request even on a kept-alive
//! connection, while a request in flight finishes with the app it started with.

mod body;
mod conn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::guard::Connection;
use crate::metrics::ConnectionMetrics;
use crate::{ApiError, ErrorCode};
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use registry_auth::ip::IpRanges;
use registry_auth::tls::{ClientCertificate, TlsConfig, ACME_TLS_ALPN};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use body::{Exchange, RequestBody, ResponseBody};
pub use conn::ConnectionSettings;
use conn::{Activity, Expiry, Limits, Permit, Watchdog, WatchedIo};

/// A registry as served on one address, among others told apart by host name.
#[derive(Clone)]
pub struct Site {
    /// Its name, for messages.
    pub name: String,
    /// The name clients reach it by (lowercase); `None` takes every name no other site claims.
    pub hostname: Option<String>,
    /// Further names it answers to (lowercase), such as the other names of its certificate.
    pub aliases: Vec<String>,
    /// What serves its requests.
    pub app: crate::App,
    /// Set on TLS listeners (then on every site of the address).
    pub tls: Option<Arc<TlsConfig>>,
    /// How the address bounds connections (the same for every site of the address).
    pub connection: ConnectionSettings,
    /// Proxies it trusts: not capped per address.
    pub trusted_proxies: IpRanges,
    /// Where its connection metrics go, if it has metrics.
    pub metrics: Option<ConnectionMetrics>,
}

/// Why sites cannot share one address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SitesError {
    /// No site at all.
    #[error("no instance to serve")]
    Empty,
    /// Some sites speak TLS, others not.
    #[error("instances {tls} (TLS) and {plain} (plain HTTP) cannot share one address")]
    MixedTls {
        /// The TLS sites.
        tls: String,
        /// The plain ones.
        plain: String,
    },
    /// Two sites would answer to the same host name.
    #[error(
        "instances {0} and {1} share one address with {2}: give each its own instance.hostname"
    )]
    SameHostname(String, String, String),
    /// Two sites bound connections differently.
    #[error("instances {0} and {1} share one address with different [server] connection settings: give them the same")]
    DifferentBounds(String, String),
}

/// The sites of one address.
pub struct Sites {
    sites: Vec<Site>,
    connection: ConnectionSettings,
    exempt: IpRanges,
    metrics: Vec<ConnectionMetrics>,
}

impl Sites {
    /// One site alone on its address.
    pub fn one(site: Site) -> Sites {
        Sites {
            connection: site.connection.clone(),
            exempt: site.trusted_proxies.clone(),
            metrics: site.metrics.iter().cloned().collect(),
            sites: vec![site],
        }
    }

    /// Sites sharing one address: all over TLS or none, no host name twice, the same
    /// connection settings.
    pub fn new(sites: Vec<Site>) -> Result<Sites, SitesError> {
        let names = |f: &dyn Fn(&Site) -> bool| {
            sites
                .iter()
                .filter(|s| f(s))
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if sites.iter().any(|s| s.tls.is_some()) && sites.iter().any(|s| s.tls.is_none()) {
            return Err(SitesError::MixedTls {
                tls: names(&|s| s.tls.is_some()),
                plain: names(&|s| s.tls.is_none()),
            });
        }
        for (i, a) in sites.iter().enumerate() {
            let clash = sites[..i].iter().find_map(|b| {
                if b.hostname == a.hostname {
                    return Some((b, a.hostname.clone()));
                }
                let names = |s: &Site| {
                    s.hostname
                        .iter()
                        .chain(&s.aliases)
                        .cloned()
                        .collect::<Vec<_>>()
                };
                let theirs = names(b);
                names(a)
                    .into_iter()
                    .find(|n| theirs.contains(n))
                    .map(|n| (b, Some(n)))
            });
            if let Some((b, name)) = clash {
                let host = match name {
                    Some(h) => format!("host name {h:?}"),
                    None => "no host name".to_owned(),
                };
                return Err(SitesError::SameHostname(
                    b.name.clone(),
                    a.name.clone(),
                    host,
                ));
            }
            if let Some(b) = sites[..i].iter().find(|b| b.connection != a.connection) {
                return Err(SitesError::DifferentBounds(b.name.clone(), a.name.clone()));
            }
        }
        let Some(first) = sites.first() else {
            return Err(SitesError::Empty);
        };
        Ok(Sites {
            connection: first.connection.clone(),
            exempt: IpRanges::union(sites.iter().map(|s| &s.trusted_proxies)),
            metrics: sites.iter().filter_map(|s| s.metrics.clone()).collect(),
            sites,
        })
    }

    /// The sites.
    pub fn iter(&self) -> impl Iterator<Item = &Site> {
        self.sites.iter()
    }

    /// The site serving `host` (a Host header or SNI name; `None` when absent).
    fn find(&self, host: Option<&str>) -> Option<usize> {
        if self.sites.len() == 1 {
            return Some(0);
        }
        let host = host.map(normalize_host);
        host.and_then(|h| {
            self.sites
                .iter()
                .position(|s| s.hostname.as_deref() == Some(h.as_str()) || s.aliases.contains(&h))
        })
        .or_else(|| self.sites.iter().position(|s| s.hostname.is_none()))
    }

    /// The app that serves `r` on a connection whose handshake picked the site named `fixed`
    /// (TLS), or the host names it gave if none (or another) does.
    fn app_for<B>(&self, r: &Request<B>, fixed: Option<&str>) -> Result<crate::App, String> {
        // Every name the request gives, and the TLS handshake's, must lead to one site.
        let hosts = request_hosts(r);
        let named = hosts.iter().flatten().map(|h| self.find(Some(h)));
        let site = if hosts.iter().all(Option::is_none) {
            self.find(None)
        } else {
            named.reduce(|a, b| if a == b { a } else { None }).flatten()
        };
        match (site, fixed) {
            (Some(s), None) => Ok(self.sites[s].app.clone()),
            (Some(s), Some(f)) if self.sites[s].name == f => Ok(self.sites[s].app.clone()),
            _ => Err(hosts
                .iter()
                .flatten()
                .map(|h| normalize_host(h))
                .collect::<Vec<_>>()
                .join(", ")),
        }
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

/// The sites an address serves now; a new value replaces them for the next connection and
/// the next request (see the module documentation).
pub type CurrentSites = watch::Receiver<Arc<Sites>>;

/// Serves the `sites` on `listener` until `stop` turns true, then lets in-flight requests
/// finish for the shutdown timeout and closes what is left.
pub async fn serve(listener: TcpListener, sites: CurrentSites, stop: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No header read timeout of hyper's: the watchdog already closes a connection with no
    // request in flight for the idle timeout, which bounds a request head arriving slowly,
    // and hyper's timer cost a timer-wheel entry for every request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let limits = Limits::new();
    // Every connection task holds a sender; when all are gone, the receiver sees the end.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let (force, forced) = watch::channel(false);
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
        let now = sites.borrow().clone();
        let permit = match limits.admit(peer.ip(), &now.connection, &now.exempt) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(%peer, cap = why.label(), "connection refused: too many open");
                now.metrics.iter().for_each(|m| m.refused(why.label()));
                continue; // dropping the stream closes it
            }
        };
        let _ = tcp.set_nodelay(true);
        let task = Connecting {
            metrics: now.metrics.clone().into(),
            sites: now,
            current: sites.clone(),
            builder: builder.clone(),
            stop: stop.clone(),
            forced: forced.clone(),
            _alive: alive.clone(),
            _permit: permit,
        };
        tokio::spawn(task.run(tcp, peer));
    }
    drop(listener);
    drop(alive);
    let deadline = sites.borrow().connection.shutdown_timeout;
    let finished = tokio::time::timeout(deadline, all_done.recv()).await;
    if finished.is_err() {
        tracing::warn!(
            timeout = ?deadline,
            "requests still in flight at the shutdown deadline; closing their connections"
        );
        let _ = force.send(true);
        let _ = all_done.recv().await;
    }
}

/// A connection being served, with everything its task needs.
struct Connecting {
    /// The sites when it was accepted: its bounds, certificate and client-certificate policy.
    sites: Arc<Sites>,
    /// The sites as they are now, for each request.
    current: CurrentSites,
    builder: Arc<auto::Builder<TokioExecutor>>,
    metrics: Arc<[ConnectionMetrics]>,
    stop: watch::Receiver<bool>,
    forced: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    _permit: Permit,
}

impl Connecting {
    async fn run(self, tcp: TcpStream, peer: SocketAddr) {
        let metrics = self.metrics.clone();
        metrics.iter().for_each(ConnectionMetrics::opened);
        let _open = OpenGauge(metrics.clone());
        let settings = &self.sites.connection;
        let sites = self.sites.clone();
        let current = self.current.clone();
        let tls = sites.sites.iter().any(|s| s.tls.is_some());
        let (io, certificate, fixed): (Box<dyn Io>, _, _) = if !tls {
            (Box::new(tcp), None, None)
        } else {
            match handshake(&sites, tcp, settings.handshake_timeout).await {
                Ok((stream, certificate, site)) => (
                    Box::new(stream),
                    certificate,
                    Some(sites.sites[site].name.clone()),
                ),
                Err(Handshake::TimedOut) => {
                    let why = Expiry::Handshake.label();
                    metrics.iter().for_each(|m| m.closed(why));
                    tracing::info!(%peer, "TLS handshake failed: timed out");
                    return;
                }
                Err(Handshake::Failed(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(Handshake::Challenge(name)) => {
                    tracing::info!(%peer, name = %name, "answered an ACME TLS-ALPN-01 validation");
                    return;
                }
            }
        };
        let activity = Activity::new();
        let connection = Connection {
            peer,
            certificate,
            tls,
        };
        let service = {
            let (activity, settings) = (activity.clone(), settings.clone());
            let metrics = metrics.clone();
            tower::service_fn(move |r: Request<Incoming>| {
                let end = Exchange::begin(&r, activity.clone(), &settings, metrics.clone());
                let app = current.borrow().app_for(&r, fixed.as_deref());
                let (mut parts, incoming) = r.into_parts();
                parts.extensions.insert(connection.clone());
                let body = RequestBody::new(incoming, end.exchange().clone());
                let request = Request::from_parts(parts, axum::body::Body::new(body));
                async move {
                    let response = match app {
                        Ok(app) => app.call(request).await,
                        Err(hosts) => misdirected(&hosts),
                    };
                    let response = if end.exchange().timed_out() {
                        request_timeout()
                    } else {
                        response
                    };
                    Ok::<_, std::convert::Infallible>(response.map(|b| ResponseBody::new(b, end)))
                }
            })
        };
        let io = WatchedIo::new(io, activity.clone(), settings);
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(conn);
        let watchdog = Watchdog::new(activity, settings);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopped(self.stop.clone()) => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stopped(self.forced.clone()) => {
                        metrics.iter().for_each(|m| m.closed("shutdown"));
                        return;
                    }
                }
            }
            why = watchdog.expired() => {
                metrics.iter().for_each(|m| m.closed(why.label()));
                tracing::debug!(%peer, reason = why.label(), "closing connection");
                if why == Expiry::Send {
                    return; // the client does not read: nothing graceful can reach it
                }
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(GRACEFUL_CLOSE, conn.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// How long a connection closed by the watchdog may take to say goodbye.
const GRACEFUL_CLOSE: Duration = Duration::from_secs(5);

/// Why a TLS handshake led to no requests.
enum Handshake {
    TimedOut,
    Failed(String),
    /// A certificate authority's TLS-ALPN-01 validation for this name, answered and closed.
    Challenge(String),
}

/// Keeps the open-connections gauge while a connection task lives.
struct OpenGauge(Arc<[ConnectionMetrics]>);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.iter().for_each(ConnectionMetrics::ended);
    }
}

/// Resolves once the stop flag is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// 421: no site on this address serves `host`.
fn misdirected(hosts: &str) -> axum::response::Response {
    let mut response = error_response(
        ErrorCode::Denied,
        format!("no registry instance serves host {hosts:?} on this connection"),
    );
    *response.status_mut() = http::StatusCode::MISDIRECTED_REQUEST;
    response
}

/// 408: the request body stopped arriving; the connection closes after the answer.
fn request_timeout() -> axum::response::Response {
    let mut response = error_response(
        ErrorCode::RequestTimeout,
        "the client stopped sending the request body",
    );
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// The registry's JSON error answer for requests no app answers.
fn error_response(code: ErrorCode, message: impl Into<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = ApiError::new(code, message).into_response();
    crate::set_api_version(response.headers_mut());
    response
}

/// Runs the TLS handshake with a deadline, with the certificate and client-certificate policy
/// of the site the SNI name picks; returns the stream, the verified client certificate if one
/// was presented, and the site.
async fn handshake(
    sites: &Sites,
    tcp: TcpStream,
    deadline: Duration,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        Option<Arc<ClientCertificate>>,
        usize,
    ),
    Handshake,
> {
    let handshake = async {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = acceptor
            .await
            .map_err(|e| Handshake::Failed(e.to_string()))?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let site = sites
            .find(sni.as_deref())
            .ok_or_else(|| Handshake::Failed(format!("no instance serves {sni:?}")))?;
        let Some(tls) = &sites.sites[site].tls else {
            return Err(Handshake::Failed("not a TLS site".to_owned()));
        };
        let validation = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validation {
            // RFC 8737: the validation server offers only acme-tls/1 and sends no request.
            let (Some(challenges), Some(name)) = (tls.challenges(), sni) else {
                return Err(Handshake::Failed(
                    "acme-tls/1 offered without SNI, or to an instance without ACME".to_owned(),
                ));
            };
            let Some(config) = challenges.challenge_config(&name).await else {
                return Err(Handshake::Failed(format!(
                    "acme-tls/1 offered for {name}, which has no validation pending"
                )));
            };
            let mut stream = start
                .into_stream(config)
                .await
                .map_err(|e| Handshake::Failed(e.to_string()))?;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return Err(Handshake::Challenge(name));
        }
        let stream = start
            .into_stream(tls.current())
            .await
            .map_err(|e| Handshake::Failed(e.to_string()))?;
        Ok((stream, site))
    };
    let (stream, site) = match tokio::time::timeout(deadline, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Handshake::TimedOut),
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
            aliases: Vec::new(),
            app: axum::Router::new().into(),
            tls: None,
            connection: ConnectionSettings::default(),
            trusted_proxies: IpRanges::none(),
            metrics: None,
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
