//! A webhook receiver for the event tests: a real HTTP server on a loopback port that records
//! every request it accepts, and can fail the first few on purpose.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};

/// One request the receiver accepted.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Book {
    accepted: Vec<Received>,
    refused: usize,
    /// Requests still to answer 503.
    to_fail: usize,
}

/// The receiver; stops when dropped.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    book: Arc<Mutex<Book>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free port (or `addr`), failing the first `fail` requests with 503.
    pub(crate) async fn start(addr: Option<SocketAddr>, fail: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let book = Arc::new(Mutex::new(Book {
            to_fail: fail,
            ..Book::default()
        }));
        let state = book.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let mut book = state.lock().unwrap();
                    if book.to_fail > 0 {
                        book.to_fail -= 1;
                        book.refused += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let body = serde_json::from_slice(&body).expect("a JSON body");
                    book.accepted.push(Received { headers, body });
                    StatusCode::OK
                }
            }),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, book, task }
    }

    /// `http://addr/hook`
    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The requests accepted so far.
    pub(crate) fn accepted(&self) -> Vec<Received> {
        self.book.lock().unwrap().accepted.clone()
    }

    /// The requests refused on purpose so far.
    pub(crate) fn refused(&self) -> usize {
        self.book.lock().unwrap().refused
    }

    /// Every event of every accepted envelope, in arrival order.
    pub(crate) fn events(&self) -> Vec<serde_json::Value> {
        self.accepted()
            .iter()
            .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (30 s at most) until `done` holds for the events received.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "{what}: got {events:#?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
