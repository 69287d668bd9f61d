//! Request and response bodies as the listener hands them to the app and to hyper.
//!
//! [`RequestBody`] answers an error when the client stops sending for `body_timeout` (the
//! listener then answers 408). When the app is done with a request body it has not read to
//! the end (it answered early: 401, 403, 413, 416…), the body is not dropped at once, since
//! that resets a client that is still sending; it is released only when the response has been
//! sent ([`ResponseBody`] is dropped), and then read and discarded in the background, up to
//! `drain_limit` bytes and `drain_timeout`, so the client finishes sending and reads the answer
//! (and may go on using the connection). Past the bounds it is dropped: over HTTP/2 that resets
//! the stream with `NO_ERROR` after the complete response, as RFC 9113 §8.1 allows; over
//! HTTP/1.1 it closes the connection, gracefully (see `conn`). HTTP/2 is drained too, rather
//! than reset at once, because clients that are still sending when the reset arrives may fail
//! the request instead of reading the answer (curl 7.88 does, now and then, even for 100 KB).
//! A client waiting for `100 Continue` is not drained: it sends nothing more.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::metrics::ConnectionMetrics;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::conn::Activity;

/// An error of a request body.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body stopped arriving.
#[derive(Debug)]
pub(super) struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client stopped sending the request body")
    }
}

impl std::error::Error for BodyTimeout {}

/// Where a request body is, between the app and the end of its response.
enum Slot {
    /// The app holds it.
    InUse,
    /// The app let go of it before the response was sent.
    Returned(Incoming, bool),
    /// The response has been sent (or abandoned).
    ResponseDone,
}

/// What one request's body and response share.
pub(super) struct Exchange {
    slot: Mutex<Slot>,
    timed_out: AtomicBool,
    http2: bool,
    expects_continue: bool,
    activity: Arc<Activity>,
    drain_limit: u64,
    drain_timeout: Duration,
    body_timeout: Duration,
    metrics: Arc<[ConnectionMetrics]>,
}

impl Exchange {
    /// Starts a request on a connection: counts it in flight until the returned end is dropped.
    pub(super) fn begin(
        request: &http::Request<Incoming>,
        activity: Arc<Activity>,
        settings: &super::conn::ConnectionSettings,
        metrics: Arc<[ConnectionMetrics]>,
    ) -> ExchangeEnd {
        activity.request_started();
        let expects_continue = request
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        ExchangeEnd(Arc::new(Exchange {
            slot: Mutex::new(Slot::InUse),
            timed_out: AtomicBool::new(false),
            http2: request.version() == http::Version::HTTP_2,
            expects_continue,
            activity,
            drain_limit: settings.drain_limit,
            drain_timeout: settings.drain_timeout,
            body_timeout: settings.body_timeout,
            metrics,
        }))
    }

    /// Whether the request body timed out.
    pub(super) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The app let go of the body.
    fn returned(&self, body: Incoming, started: bool) {
        let mut slot = self.lock();
        match *slot {
            Slot::ResponseDone => {
                drop(slot);
                self.release(body, started);
            }
            _ => *slot = Slot::Returned(body, started),
        }
    }

    /// The response is sent.
    fn response_done(&self) {
        let previous = std::mem::replace(&mut *self.lock(), Slot::ResponseDone);
        if let Slot::Returned(body, started) = previous {
            self.release(body, started);
        }
    }

    /// Lets go of a body the app is done with, after the response (see the module docs).
    fn release(&self, body: Incoming, started: bool) {
        if body.is_end_stream() || self.timed_out() {
            return;
        }
        if self.expects_continue && !started {
            // The client waits for `100 Continue` and should send nothing; one that sends
            // anyway is read while the connection closes.
            self.activity.left_unread();
            return;
        }
        let activity = self.activity.clone();
        let (limit, total, idle) = (self.drain_limit, self.drain_timeout, self.body_timeout);
        let metrics = self.metrics.clone();
        let http2 = self.http2;
        tokio::spawn(async move {
            let mut body = body;
            let drained = drain(&mut body, limit, total, idle).await;
            metrics.iter().for_each(|m| m.drained(drained));
            if !drained && !http2 {
                // Before the body goes: its end makes hyper close the connection, and the
                // close must linger for what the client still sends.
                activity.left_unread();
            }
            drop(body);
        });
    }
}

/// Reads and discards `body` to its end within the bounds; whether it got there.
async fn drain(body: &mut Incoming, limit: u64, total: Duration, idle: Duration) -> bool {
    let deadline = Instant::now() + total;
    let mut read = 0u64;
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        let wait_until = deadline.min(Instant::now() + idle);
        match tokio::time::timeout_at(wait_until, next).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > limit {
                    return false;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// Ends the exchange when dropped: with the response body once it is sent, or with the
/// request's future when the client goes away first.
pub(super) struct ExchangeEnd(Arc<Exchange>);

impl ExchangeEnd {
    pub(super) fn exchange(&self) -> &Arc<Exchange> {
        &self.0
    }
}

impl Drop for ExchangeEnd {
    fn drop(&mut self) {
        self.0.response_done();
        self.0.activity.request_ended();
    }
}

/// The request body the app reads.
pub(super) struct RequestBody {
    inner: Option<Incoming>,
    exchange: Arc<Exchange>,
    started: bool,
    last_progress: Instant,
    stall: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    pub(super) fn new(inner: Incoming, exchange: Arc<Exchange>) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            exchange,
            started: false,
            last_progress: Instant::now(),
            stall: None,
        }
    }

    /// Whether the body has stalled for the timeout; arms the timer to look again otherwise.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.exchange.body_timeout;
        loop {
            let due = self.last_progress + timeout;
            let stall = self
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if stall.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= due {
                return true;
            }
            stall.as_mut().reset(due); // there was progress since it was armed
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.started = true;
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last_progress = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.stalled(cx) => {
                this.exchange.timed_out.store(true, Ordering::Relaxed);
                this.exchange
                    .metrics
                    .iter()
                    .for_each(|m| m.closed("body_timeout"));
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take() {
            self.exchange.returned(body, self.started);
        }
    }
}

/// The response body hyper sends; its end ends the exchange.
pub(super) struct ResponseBody {
    inner: axum::body::Body,
    _end: ExchangeEnd,
}

impl ResponseBody {
    pub(super) fn new(inner: axum::body::Body, end: ExchangeEnd) -> ResponseBody {
        ResponseBody { inner, _end: end }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
