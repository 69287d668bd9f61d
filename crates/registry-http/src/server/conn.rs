//! One connection's bounds: how many connections an address and a listener may hold, how long a
//! connection may wait for its first request, sit idle, or stall a response, and how it closes.
//!
//! The [`Watchdog`] decides from the connection's [`Activity`] (requests in flight, the last
//! request's start or end, a write the peer has not taken yet) when a connection must go:
//! - no request begun within `handshake_timeout` of the handshake (or of the accept);
//! - no request in flight for `idle_timeout`;
//! - a write blocked for `body_timeout` (a client that stopped reading).
//!
//! [`WatchedIo`] wraps the byte stream: it records blocked writes, closes *gracefully* (its
//! shutdown sends FIN or TLS close_notify and then keeps reading and discarding what the client
//! still sends, up to `drain_limit` bytes and `drain_timeout`, when a request was left unread),
//! so a client still sending a body reads the answer instead of a connection reset; and it gives
//! the bare `400`, `414` and `431` that hyper writes for requests it cannot parse the registry's
//! JSON error body.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crate::ErrorCode;
use registry_auth::ip::{client_key, IpRanges};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How connections of one listening address are bounded. Instances sharing an address must
/// agree on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// A TLS handshake, and a new connection's first request, must come within this.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// A request body that sends nothing for this long is answered 408; a response the client
    /// does not read for this long closes the connection.
    pub body_timeout: Duration,
    /// After SIGTERM, in-flight requests get this long; then connections are closed.
    pub shutdown_timeout: Duration,
    /// Open connections on the address (further ones are closed at once).
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64); trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// After an early answer (401, 403, 413…), this much of the unread request body is read
    /// and discarded so the client can read the answer.
    pub drain_limit: u64,
    /// … for at most this long.
    pub drain_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_address: 512,
            drain_limit: 32 << 20,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Counts the connections of one listening address, in total and per client address.
pub(super) struct Limits {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug)]
pub(super) enum Refused {
    Total,
    PerAddress,
}

impl Refused {
    pub(super) fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerAddress => "per_address",
        }
    }
}

impl Limits {
    /// No connection open yet.
    pub(super) fn new() -> Arc<Limits> {
        Arc::new(Limits {
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits a connection from `ip` under the caps of `settings` (`exempt`, trusted proxies,
    /// are not capped per address), or says which cap it hits. The caps come with each call,
    /// so a reload applies them to the next connection.
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        settings: &ConnectionSettings,
        exempt: &IpRanges,
    ) -> Result<Permit, Refused> {
        let key = client_key(ip);
        let capped = !exempt.contains(ip.to_canonical());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= settings.max_connections {
            return Err(Refused::Total);
        }
        let mine = open.1.get(&key).copied().unwrap_or(0);
        if capped && mine >= settings.max_connections_per_address {
            return Err(Refused::PerAddress);
        }
        open.0 += 1;
        open.1.insert(key, mine + 1);
        Ok(Permit {
            limits: self.clone(),
            key,
        })
    }
}

/// An admitted connection; releases its place when dropped.
pub(super) struct Permit {
    limits: Arc<Limits>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

/// What a connection is doing, as its requests and its byte stream report it.
pub(super) struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds since `origin` of the last request start or end.
    last_event: AtomicU64,
    /// 1 + milliseconds since `origin` when a write began to wait for the peer; 0 if none.
    write_blocked: AtomicU64,
    /// A request body was left unread: closing must drain what the client still sends.
    unread: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_event: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            unread: AtomicBool::new(false),
        })
    }

    fn millis(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn at(&self, millis: u64) -> Instant {
        self.origin + Duration::from_millis(millis)
    }

    /// A request begins (its head has been read).
    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_event.store(self.millis(), Ordering::Relaxed);
    }

    /// A request ends (its response is sent, or it was abandoned).
    pub(super) fn request_ended(&self) {
        self.last_event.store(self.millis(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks that a request body was left unread on this connection.
    pub(super) fn left_unread(&self) {
        self.unread.store(true, Ordering::Relaxed);
    }

    fn write_pending(&self, pending: bool) {
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        match (pending, blocked) {
            (true, 0) => self
                .write_blocked
                .store(self.millis() + 1, Ordering::Relaxed),
            (false, b) if b != 0 => self.write_blocked.store(0, Ordering::Relaxed),
            _ => {}
        }
    }
}

/// Why the watchdog closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No request began in time on a new connection: closed gracefully.
    Handshake,
    /// Nothing in flight for the idle timeout: closed gracefully.
    Idle,
    /// The client stopped reading a response: dropped.
    Send,
}

impl Expiry {
    pub(super) fn label(self) -> &'static str {
        match self {
            Expiry::Handshake => "handshake_timeout",
            Expiry::Idle => "idle_timeout",
            Expiry::Send => "send_timeout",
        }
    }
}

/// Watches one connection's activity for the deadlines of the module documentation.
pub(super) struct Watchdog {
    activity: Arc<Activity>,
    handshake: Duration,
    idle: Duration,
    send: Duration,
}

impl Watchdog {
    pub(super) fn new(activity: Arc<Activity>, settings: &ConnectionSettings) -> Watchdog {
        Watchdog {
            activity,
            handshake: settings.handshake_timeout,
            idle: settings.idle_timeout,
            send: settings.body_timeout,
        }
    }

    /// The next deadline the current state sets, and what passing it means.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        let a = &self.activity;
        let blocked = a.write_blocked.load(Ordering::Relaxed);
        if blocked != 0 {
            return Some((a.at(blocked - 1) + self.send, Expiry::Send));
        }
        if a.in_flight() > 0 {
            return None;
        }
        let last = a.at(a.last_event.load(Ordering::Relaxed));
        match a.requests.load(Ordering::Relaxed) {
            0 => Some((last + self.handshake, Expiry::Handshake)),
            _ => Some((last + self.idle, Expiry::Idle)),
        }
    }

    /// Resolves when a deadline passes. It sleeps until the deadline the state sets and looks
    /// again: requests starting and ending only postpone it. While requests are in flight there
    /// is none, but a write may block at any moment: then it looks again every quarter of the
    /// shortest timeout, so a stalled write is noticed at most that late. (A write blocking on
    /// a connection with nothing in flight, an HTTP/2 control frame, is noticed at the idle
    /// deadline at the latest, which closes the connection as well.)
    pub(super) async fn expired(&self) -> Expiry {
        let recheck = self.idle.min(self.send).min(self.handshake) / 4;
        loop {
            match self.deadline() {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(recheck).await,
            }
        }
    }
}

/// A connection's byte stream, with the bookkeeping and closing described in the module
/// documentation.
pub(super) struct WatchedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    drain_limit: u64,
    drain_timeout: Duration,
    /// A replacement for hyper's bare error answer, and how much of it is written.
    replacing: Option<(Vec<u8>, usize)>,
    linger: Option<Linger>,
}

struct Linger {
    shut: bool,
    deadline: Pin<Box<Sleep>>,
    quiet: Pin<Box<Sleep>>,
    read: u64,
    scratch: Box<[u8]>,
}

/// Once the client has sent nothing for this long while the connection lingers, it is closed.
const LINGER_QUIET: Duration = Duration::from_millis(500);

impl<T> WatchedIo<T> {
    pub(super) fn new(inner: T, activity: Arc<Activity>, settings: &ConnectionSettings) -> Self {
        WatchedIo {
            inner,
            activity,
            drain_limit: settings.drain_limit,
            drain_timeout: settings.drain_timeout,
            replacing: None,
            linger: None,
        }
    }
}

/// The JSON answer that replaces hyper's bare one for `head`, if `head` is one: hyper writes
/// a status line, `content-length: 0`, a date and nothing else when it cannot parse a request,
/// always as a whole write of its own, and only while no request is in flight.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let code = match rest.get(..4)? {
        b"400 " => ErrorCode::BadRequest,
        b"414 " => ErrorCode::UriTooLong,
        b"431 " => ErrorCode::HeadersTooLarge,
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?;
    let lines = text.strip_suffix("\r\n\r\n")?;
    let bare = lines.split("\r\n").skip(1).all(|line| {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "content-length" => line[name.len() + 1..].trim() == "0",
            "date" | "connection" => true,
            _ => false,
        }
    });
    if !bare {
        return None;
    }
    let message = match code {
        ErrorCode::UriTooLong => "the request line is too long",
        ErrorCode::HeadersTooLarge => "the request headers are too large",
        _ => "the request could not be parsed",
    };
    Some(raw_error(code, message))
}

/// A whole HTTP/1.1 error response with the registry's JSON body, closing the connection.
pub(super) fn raw_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let (name, status) = code.parts();
    let body = serde_json::json!({"errors": [{"code": name, "message": message}]}).to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         docker-distribution-api-version: registry/2.0\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

impl<T: AsyncRead + AsyncWrite + Unpin> WatchedIo<T> {
    /// Writes the pending replacement; ready with `reported` (the length hyper asked to write)
    /// once all of it is out.
    fn poll_replacement(
        &mut self,
        cx: &mut Context<'_>,
        reported: usize,
    ) -> Poll<io::Result<usize>> {
        while let Some((bytes, done)) = self.replacing.as_mut() {
            if *done == bytes.len() {
                self.replacing = None;
                return Poll::Ready(Ok(reported));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(reported))
    }

    fn track<R>(&self, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        self.activity.write_pending(poll.is_pending());
        poll
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() && self.activity.in_flight() == 0 {
            if let Some(bytes) = replacement(buf) {
                self.activity.left_unread();
                self.replacing = Some((bytes, 0));
            }
        }
        if self.replacing.is_some() {
            let poll = self.poll_replacement(cx, buf.len());
            return self.track(poll);
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper writes its bare answers in one buffer; whatever starts a vectored write is
        // looked at like a plain one.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if self.replacing.is_some()
                || (self.activity.in_flight() == 0 && replacement(first).is_some())
            {
                return self.poll_write(cx, first);
            }
        }
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(poll)
    }

    /// Half-closes, then (if a request was left unread) reads and discards what the client
    /// still sends until it closes, goes quiet, or the drain bounds are reached.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let linger = this.linger.get_or_insert_with(|| Linger {
            shut: false,
            deadline: Box::pin(tokio::time::sleep(this.drain_timeout)),
            quiet: Box::pin(tokio::time::sleep(LINGER_QUIET)),
            read: 0,
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
        });
        if !linger.shut {
            let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
            this.activity.write_pending(poll.is_pending());
            let _ = ready!(poll); // a peer that is gone already needs no lingering
            linger.shut = true;
        }
        if !this.activity.unread.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        loop {
            if linger.deadline.as_mut().poll(cx).is_ready() || linger.read > this.drain_limit {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut linger.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    linger.read += buf.filled().len() as u64;
                    let quiet_until = Instant::now() + LINGER_QUIET;
                    linger.quiet.as_mut().reset(quiet_until);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match linger.quiet.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total() {
        let settings = ConnectionSettings {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ConnectionSettings::default()
        };
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let exempt = IpRanges::parse(&["10.0.0.1"]).unwrap();
        let limits = Limits::new();
        let admit = |ip: IpAddr| limits.admit(ip, &settings, &exempt);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a1 = admit(a).unwrap();
        let _a2 = admit("::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert!(matches!(admit(a), Err(Refused::PerAddress)));
        let _p1 = admit(proxy).unwrap();
        assert!(matches!(admit(proxy), Err(Refused::Total)));
        drop(a1);
        let _p2 = admit(proxy).expect("proxies are not capped per address");
        assert!(matches!(
            admit("2001:db8::1".parse().unwrap()),
            Err(Refused::Total)
        ));
        let wider = ConnectionSettings {
            max_connections: 4,
            ..settings.clone()
        };
        let _b = limits
            .admit("2001:db8::1".parse().unwrap(), &wider, &exempt)
            .expect("raised caps apply to the next connection");
    }

    #[test]
    fn hyper_bare_answers_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 12:00:00 GMT\r\n\r\n";
        let json = String::from_utf8(replacement(bare).unwrap()).unwrap();
        assert!(json.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(json.ends_with(
            r#"{"errors":[{"code":"HEADERS_TOO_LARGE","message":"the request headers are too large"}]}"#
        ));
        let uri = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(replacement(uri).unwrap())
            .unwrap()
            .contains("URI_TOO_LONG"));
        // Anything else is left alone: the app's own answers, bodies, other statuses.
        for other in [
            &b"HTTP/1.1 431 X\r\ncontent-length: 10\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ncontent-type: x\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"errors\":[]}",
        ] {
            assert!(replacement(other).is_none());
        }
    }
}
