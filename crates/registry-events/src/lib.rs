//! Event notifications: what happened in a registry (a push, pull, delete or mount), sent to
//! webhook endpoints in CNCF Distribution's envelope format
//! (`application/vnd.docker.distribution.events.v1+json`), so consumers written for
//! Distribution work unchanged, or as CloudEvents.
//!
//! How an event travels, and why:
//! - [`Notifier::emit`] never waits: it puts the event in a bounded in-memory channel per
//!   endpoint (full: the event is dropped and counted), so a slow or dead endpoint never slows
//!   a push.
//! - A writer task per endpoint moves events from the channel into the registry's storage,
//!   a batch per object under `events/<endpoint>/queue/` (see `registry_core::layout`), keyed
//!   by time so a listing gives them oldest first. Queued there, events survive a restart and
//!   are seen by every node sharing the storage. (The milliseconds between `emit` and that
//!   write are the only time an event lives in memory alone; a graceful stop writes what is
//!   left, see [`Upkeep::finish`].)
//! - One node at a time delivers each endpoint's queue: it holds the endpoint's lease
//!   (`events/<endpoint>/lease`: owner and expiry, renewed while it delivers; a node takes it
//!   when it is absent or expired, then reads it back after a pause to see that its write won,
//!   as garbage collection does, and looks again before each renewal, so two nodes that both
//!   believed they won sort it out within a renewal period, 10 s). Nodes without the lease
//!   only write. Delivery goes oldest first, one batch at a time, retried with doubling
//!   backoff; a batch is deleted once the endpoint answered 2xx or 3xx (as Distribution counts
//!   success). So every event reaches the endpoint at least once; it reaches it twice only
//!   when a node stops (or loses its lease) between the endpoint's answer and the deletion, or
//!   in the renewal period of such a race, and each event's `id` lets the consumer see that.
//! - Events older than the endpoint's `max_age` are dropped unsent, as are the oldest batches
//!   beyond its `max_queued` bound; both are counted and logged.
#![forbid(unsafe_code)]

mod queue;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use registry_auth::pattern::RepoGlob;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use queue::Upkeep;

/// The media type of Distribution's event envelope.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A manifest or blob was stored.
    Push,
    /// A manifest or blob was read (GET).
    Pull,
    /// A manifest, tag or blob was deleted.
    Delete,
    /// A blob was mounted from another repository.
    Mount,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 4] = [Action::Push, Action::Pull, Action::Delete, Action::Mount];

    /// Its name in events and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Pull => "pull",
            Action::Delete => "delete",
            Action::Mount => "mount",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = Error;

    fn from_str(s: &str) -> Result<Action, Error> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                Error::Setting(format!(
                    "{s:?} is not an action (push, pull, delete, mount)"
                ))
            })
    }
}

/// One event, as Distribution writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique: a consumer that sees an id twice saw one event twice.
    pub id: String,
    /// When it happened (RFC 3339).
    pub timestamp: String,
    /// What happened.
    pub action: Action,
    /// What it happened to.
    pub target: Target,
    /// The request that made it happen.
    pub request: RequestRecord,
    /// Who made it happen.
    pub actor: Actor,
    /// The registry node where it happened.
    pub source: Source,
}

/// What an event happened to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The manifest's or blob's media type (blobs: `application/octet-stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The same as `size` (Distribution sends both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// The repository.
    pub repository: String,
    /// Where a mounted blob came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_repository: Option<String>,
    /// Where the content can be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The tag, for a manifest pushed or pulled by tag, or a tag deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// The request behind an event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// A unique id of the request.
    pub id: String,
    /// The client's address.
    pub addr: String,
    /// The host name the client asked for.
    pub host: String,
    /// The HTTP method.
    pub method: String,
    /// The client's User-Agent.
    pub useragent: String,
}

/// Who made an event happen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The user (or certificate or token subject); absent for anonymous requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The registry node where an event happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The node's address (host name and port).
    pub addr: String,
    /// The node's id, new at each start.
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// A fresh unique id (a random UUID), for events and requests.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Event {
    /// A new event (a fresh id, the time now).
    pub fn new(action: Action, target: Target, request: RequestRecord, actor: Actor) -> Event {
        let now = time::OffsetDateTime::now_utc();
        Event {
            id: new_id(),
            timestamp: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            action,
            target,
            request,
            actor,
            source: Source::default(),
        }
    }
}

/// How events go to an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Distribution's envelope (`{"events": […]}`), several events per request.
    #[default]
    Distribution,
    /// One CloudEvents 1.0 event per request, structured mode
    /// (`application/cloudevents+json`), the Distribution event as `data`.
    CloudEvents,
}

/// One webhook endpoint.
#[derive(Clone, Debug)]
pub struct EndpointSettings {
    /// Its name: lowercase letters, digits, `-`, `_` (it names its queue in storage).
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Headers sent with every request (such as `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Which actions it gets.
    pub actions: Vec<Action>,
    /// Which repositories it hears of (none: every repository).
    pub repositories: Vec<RepoGlob>,
    /// How long one request may take.
    pub timeout: Duration,
    /// The pause after the first failure; it doubles after each further one (up to 5 min).
    pub backoff: Duration,
    /// Failed attempts after which a batch is dropped; `None`: until it expires.
    pub retries: Option<u32>,
    /// Events held at most: in memory, and batches in the storage queue.
    pub max_queued: usize,
    /// Events older than this are dropped unsent.
    pub max_age: Duration,
    /// The body format.
    pub format: Format,
    /// PEM certificates of CAs to trust for the endpoint, beside the system's.
    pub ca: Option<std::path::PathBuf>,
}

impl EndpointSettings {
    /// An endpoint for every action and repository, with the defaults: 5 s timeout, 1 s
    /// first backoff, retried until an event is a day old, 10 000 events queued at most.
    pub fn new(name: &str, url: &str) -> EndpointSettings {
        EndpointSettings {
            name: name.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            actions: Action::ALL.to_vec(),
            repositories: Vec::new(),
            timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(1),
            retries: None,
            max_queued: 10_000,
            max_age: Duration::from_secs(24 * 3600),
            format: Format::Distribution,
            ca: None,
        }
    }

    fn wants(&self, action: Action, repository: &str) -> bool {
        self.actions.contains(&action)
            && (self.repositories.is_empty()
                || self.repositories.iter().any(|g| g.matches(repository)))
    }
}

/// Why notifications cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is wrong.
    #[error("{0}")]
    Setting(String),
}

/// An endpoint's counters, as the notifier keeps them.
#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Events in the storage queue as this node's deliverer last listed it.
    pub(crate) stored: AtomicU64,
}

/// An endpoint's counters, read now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSnapshot {
    /// The endpoint's name.
    pub name: String,
    /// Events the endpoint accepted.
    pub sent: u64,
    /// Failed attempts (a batch of events per attempt).
    pub failed: u64,
    /// Events dropped: the queue was full, they expired, or their retries ran out.
    pub dropped: u64,
    /// Events waiting: in this node's memory, and in the storage queue as this node last
    /// listed it (nodes that do not deliver the endpoint do not list it).
    pub queued: u64,
}

/// One endpoint as the notifier holds it.
struct Endpoint {
    settings: EndpointSettings,
    client: reqwest::Client,
    channel: mpsc::Sender<Event>,
    stats: Arc<EndpointStats>,
}

/// Sends an instance's events to its endpoints; see the module documentation.
pub struct Notifier {
    endpoints: Vec<Endpoint>,
    source: Source,
    /// Handed to [`Notifier::start`]: the receiving ends of the channels.
    pending: std::sync::Mutex<Vec<mpsc::Receiver<Event>>>,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| &e.settings.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The id of this process among the nodes sharing a storage.
fn node_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

impl Notifier {
    /// A notifier for `endpoints`, queueing in `store`; `addr` names this node in events
    /// (host name and port). Nothing is sent until [`Notifier::start`].
    pub fn new(
        store: Arc<dyn ObjectStore>,
        addr: &str,
        endpoints: Vec<EndpointSettings>,
    ) -> Result<Notifier, Error> {
        check_endpoints(&endpoints)?;
        let mut built = Vec::new();
        let mut pending = Vec::new();
        for e in endpoints {
            let mut client = reqwest::Client::builder()
                .timeout(e.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("registry/", env!("CARGO_PKG_VERSION")));
            if let Some(ca) = &e.ca {
                let pem = std::fs::read(ca).map_err(|err| {
                    Error::Setting(format!(
                        "notify endpoint {}: cannot read {}: {err}",
                        e.name,
                        ca.display()
                    ))
                })?;
                let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                    Error::Setting(format!(
                        "notify endpoint {}: {}: {err}",
                        e.name,
                        ca.display()
                    ))
                })?;
                client = client.tls_certs_merge(roots);
            }
            let client = client.build().map_err(|err| {
                Error::Setting(format!(
                    "notify endpoint {}: cannot build an HTTP client: {err}",
                    e.name
                ))
            })?;
            let (tx, rx) = mpsc::channel(e.max_queued.max(1));
            pending.push(rx);
            built.push(Endpoint {
                client,
                settings: e,
                channel: tx,
                stats: Arc::default(),
            });
        }
        Ok(Notifier {
            endpoints: built,
            source: Source {
                addr: addr.to_owned(),
                instance_id: node_id().to_owned(),
            },
            pending: std::sync::Mutex::new(pending),
            store,
        })
    }

    /// Whether some endpoint hears of `action` on `repository` (check before building an
    /// event).
    pub fn wants(&self, action: Action, repository: &str) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.settings.wants(action, repository))
    }

    /// Queues `event` for every endpoint that hears of it; never waits (see the module
    /// documentation).
    pub fn emit(&self, mut event: Event) {
        event.source = self.source.clone();
        for e in &self.endpoints {
            if !e.settings.wants(event.action, &event.target.repository) {
                continue;
            }
            match e.channel.try_send(event.clone()) {
                Ok(()) => {}
                Err(_) => {
                    e.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(endpoint = %e.settings.name, id = %event.id, "event dropped: the endpoint's queue is full");
                }
            }
        }
    }

    /// Each endpoint's counters.
    pub fn stats(&self) -> Vec<EndpointSnapshot> {
        self.endpoints
            .iter()
            .map(|e| {
                let in_memory = e.channel.max_capacity() - e.channel.capacity();
                EndpointSnapshot {
                    name: e.settings.name.clone(),
                    sent: e.stats.sent.load(Ordering::Relaxed),
                    failed: e.stats.failed.load(Ordering::Relaxed),
                    dropped: e.stats.dropped.load(Ordering::Relaxed),
                    queued: e.stats.stored.load(Ordering::Relaxed) + in_memory as u64,
                }
            })
            .collect()
    }

    /// Starts writing queued events to storage and delivering them, until the returned
    /// handle is dropped or finished. Once per notifier: later calls start nothing.
    pub fn start(&self) -> Upkeep {
        let receivers =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let work = self
            .endpoints
            .iter()
            .zip(receivers)
            .map(|(e, rx)| queue::Work {
                settings: e.settings.clone(),
                stats: e.stats.clone(),
                store: self.store.clone(),
                owner: node_id().to_owned(),
                client: e.client.clone(),
                events: rx,
            })
            .collect();
        queue::start(work)
    }
}

/// Checks endpoints as [`Notifier::new`] needs them: names that can name a queue, each
/// once; `http://` or `https://` URLs; headers HTTP can carry.
pub fn check_endpoints(endpoints: &[EndpointSettings]) -> Result<(), Error> {
    for (i, e) in endpoints.iter().enumerate() {
        check_name(&e.name)?;
        if endpoints[..i].iter().any(|b| b.name == e.name) {
            return Err(Error::Setting(format!(
                "two notify endpoints are named {:?}",
                e.name
            )));
        }
        let scheme = reqwest::Url::parse(&e.url).map(|u| u.scheme().to_owned());
        if !matches!(scheme.as_deref(), Ok("http" | "https")) {
            return Err(Error::Setting(format!(
                "notify endpoint {}: url {:?} is not an http:// or https:// URL",
                e.name, e.url
            )));
        }
        for (k, v) in &e.headers {
            let valid = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(v).is_ok();
            if !valid {
                return Err(Error::Setting(format!(
                    "notify endpoint {}: header {k:?} is not a valid HTTP header",
                    e.name
                )));
            }
        }
    }
    Ok(())
}

/// Checks an endpoint name: it names a directory in storage.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Setting(format!(
            "notify endpoint name {name:?}: use 1 to 64 lowercase letters, digits, - and _"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_distribution_writes_them() {
        let mut e = Event::new(
            Action::Push,
            Target {
                media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                size: Some(7),
                length: Some(7),
                digest: Some("sha256:ab".into()),
                repository: "team/app".into(),
                url: Some("http://reg.test/v2/team/app/manifests/sha256:ab".into()),
                tag: Some("v1".into()),
                from_repository: None,
            },
            RequestRecord::default(),
            Actor::default(),
        );
        e.source.instance_id = "node".into();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["action"], "push");
        assert_eq!(
            v["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(v["target"]["length"], 7);
        assert!(v["target"].get("fromRepository").is_none());
        assert_eq!(v["actor"], serde_json::json!({}));
        assert_eq!(v["source"]["instanceID"], "node");
        assert!(time::OffsetDateTime::parse(
            v["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn endpoints_pick_actions_and_repositories() {
        let mut s = EndpointSettings::new("ci", "http://127.0.0.1:1/");
        s.actions = vec![Action::Push];
        s.repositories = vec![RepoGlob::parse("team/**").unwrap()];
        assert!(s.wants(Action::Push, "team/a/b"));
        assert!(!s.wants(Action::Pull, "team/a"));
        assert!(!s.wants(Action::Push, "other/a"));
        assert!(check_name("Bad Name").is_err());
        let mut bad = EndpointSettings::new("ci", "ftp://example.com/");
        assert!(check_endpoints(std::slice::from_ref(&bad)).is_err());
        bad.url = "http://example.com/hook".into();
        bad.headers = vec![("Bad Header".into(), "x".into())];
        assert!(check_endpoints(std::slice::from_ref(&bad)).is_err());
        bad.headers.clear();
        assert!(
            check_endpoints(&[bad.clone(), bad]).is_err(),
            "a name twice"
        );
        assert!("fetch".parse::<Action>().is_err());
    }
}
