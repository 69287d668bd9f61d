//! The storage queue of each endpoint: the writer that moves events from memory into it, the
//! lease that lets one node deliver it, and the deliverer (see the crate documentation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::{EndpointSettings, EndpointStats, Event, Format, ENVELOPE_MEDIA_TYPE};

/// How long a deliverer's lease lasts unless renewed.
const LEASE: Duration = Duration::from_secs(30);
/// How long a node waits after writing the lease before reading it back.
const SETTLE: Duration = Duration::from_millis(300);
/// How often a deliverer looks at the queue without being woken.
const POLL: Duration = Duration::from_secs(1);
/// Events per stored batch, at most.
const BATCH: usize = 100;
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What one endpoint's tasks need.
pub(crate) struct Work {
    pub(crate) settings: EndpointSettings,
    pub(crate) stats: Arc<EndpointStats>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) owner: String,
    pub(crate) client: reqwest::Client,
    pub(crate) events: mpsc::Receiver<Event>,
}

/// The notifier's tasks. Dropping it stops delivery (the lease is left to expire, or to this
/// process's next notifier); events still arriving from requests in flight are written to
/// storage until the notifier itself is dropped. [`Upkeep::finish`] writes what is in memory
/// and waits for it.
#[derive(Debug)]
pub struct Upkeep {
    stop: watch::Sender<()>,
    closing: watch::Sender<bool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    deliverers: Vec<tokio::task::JoinHandle<()>>,
}

impl Upkeep {
    /// Writes the events still in memory to storage and stops delivering, giving up the
    /// leases (so another node, or this one restarted, delivers at once); waits up to
    /// `within`.
    pub async fn finish(self, within: Duration) {
        let _ = self.closing.send(true);
        drop(self.stop);
        let all = futures::future::join_all(self.writers.into_iter().chain(self.deliverers));
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("events still in memory at the stop deadline were not queued");
        }
    }
}

pub(crate) fn start(work: Vec<Work>) -> Upkeep {
    let (stop, stopped) = watch::channel(());
    let (closing, closed) = watch::channel(false);
    let mut writers = Vec::new();
    let mut deliverers = Vec::new();
    for w in work {
        let wake = Arc::new(Notify::new());
        let queue = Queue {
            prefix: registry_core::layout::events_queue(&w.settings.name),
            lease: registry_core::layout::events_lease(&w.settings.name),
            store: w.store,
            settings: w.settings,
            stats: w.stats,
            owner: w.owner,
        };
        let queue = Arc::new(queue);
        writers.push(tokio::spawn(write(
            queue.clone(),
            w.events,
            closed.clone(),
            wake.clone(),
        )));
        deliverers.push(tokio::spawn(deliver(
            queue,
            w.client,
            stopped.clone(),
            wake,
        )));
    }
    Upkeep {
        stop,
        closing,
        writers,
        deliverers,
    }
}

/// One endpoint's queue in storage.
struct Queue {
    settings: EndpointSettings,
    stats: Arc<EndpointStats>,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    lease: Path,
    owner: String,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves when `finish` asks the writers to close; never if the handle is dropped instead.
async fn closing(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Moves events from memory to storage, a batch per object, until the notifier is dropped
/// or `finish` closes it.
async fn write(
    queue: Arc<Queue>,
    mut events: mpsc::Receiver<Event>,
    mut closed: watch::Receiver<bool>,
    wake: Arc<Notify>,
) {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let node: String = queue.owner.chars().filter(|c| *c != '-').take(12).collect();
    loop {
        let (first, last) = tokio::select! {
            e = events.recv() => match e {
                Some(e) => (Some(e), false),
                None => return,
            },
            () = closing(&mut closed) => (None, true),
        };
        let mut batch: Vec<Event> = first.into_iter().collect();
        while batch.len() < BATCH || last {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            // The count in the name lets a listing tell how many events wait.
            let key = queue.prefix.clone().join(format!(
                "{:015}-{node}-{:010}-{}.json",
                unix_ms(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed),
                batch.len()
            ));
            let body = bytes::Bytes::from(serde_json::to_vec(&batch).unwrap_or_default());
            let mut pause = Duration::from_millis(200);
            loop {
                match queue.store.put(&key, PutPayload::from(body.clone())).await {
                    Ok(_) => break,
                    Err(e) if last => {
                        tracing::warn!(endpoint = %queue.settings.name, error = %e, events = batch.len(), "events lost: they could not be queued in storage at the stop");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %queue.settings.name, error = %e, "queueing events in storage failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(30));
                    }
                }
            }
            wake.notify_one();
        }
        if last {
            return;
        }
    }
}

#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    /// Unix milliseconds (the writer's clock) after which it is dead.
    expires: u64,
}

/// Whether this node holds the endpoint's lease, and until when.
#[derive(Default)]
struct Held(Option<Instant>);

impl Queue {
    async fn read_lease(&self) -> Option<LeaseRecord> {
        let got = self.store.get(&self.lease).await.ok()?;
        serde_json::from_slice(&got.bytes().await.ok()?).ok()
    }

    async fn write_lease(&self) -> object_store::Result<()> {
        let record = LeaseRecord {
            owner: self.owner.clone(),
            expires: unix_ms() + LEASE.as_millis() as u64,
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        self.store.put(&self.lease, PutPayload::from(body)).await?;
        Ok(())
    }

    /// Gives the lease up, if this node still holds it.
    async fn release(&self) {
        if self
            .read_lease()
            .await
            .is_some_and(|r| r.owner == self.owner)
        {
            let _ = self.store.delete(&self.lease).await;
        }
    }

    /// Takes or renews the lease; whether this node may deliver now.
    async fn hold(&self, held: &mut Held) -> bool {
        let now = Instant::now();
        if let Some(until) = held.0 {
            if until > now + LEASE * 2 / 3 {
                return true;
            }
            // Renewed well before it expires, after a look: should two nodes ever both have
            // read their own write back (a write landing after the other's pause), the one
            // whose record was overwritten sees it here and stops.
            let ours = self
                .read_lease()
                .await
                .is_some_and(|r| r.owner == self.owner);
            if ours && until > now + SETTLE && self.write_lease().await.is_ok() {
                held.0 = Some(now + LEASE);
                return true;
            }
            held.0 = None;
            if !ours {
                return false;
            }
        }
        if let Some(other) = self.read_lease().await {
            if other.owner != self.owner && other.expires > unix_ms() {
                return false;
            }
        }
        if self.write_lease().await.is_err() {
            return false;
        }
        tokio::time::sleep(SETTLE).await;
        match self.read_lease().await {
            Some(r) if r.owner == self.owner => {
                held.0 = Some(now + LEASE);
                true
            }
            _ => false,
        }
    }

    /// The queued batches, oldest first.
    async fn batches(&self) -> object_store::Result<Vec<Path>> {
        let mut keys: Vec<Path> = self
            .store
            .list(Some(&self.prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        keys.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        Ok(keys)
    }

    async fn read_batch(&self, key: &Path) -> Option<Vec<Event>> {
        let bytes = self.store.get(key).await.ok()?.bytes().await.ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(events) => Some(events),
            Err(e) => {
                tracing::warn!(endpoint = %self.settings.name, key = %key, error = %e, "an unreadable batch of events was dropped");
                Some(Vec::new())
            }
        }
    }

    fn dropped(&self, n: usize, why: &str) {
        if n > 0 {
            self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.settings.name, events = n, "events dropped unsent: {why}");
        }
    }

    /// Whether `event` is older than the endpoint's `max_age`.
    fn expired(&self, event: &Event) -> bool {
        let Ok(at) = time::OffsetDateTime::parse(
            &event.timestamp,
            &time::format_description::well_known::Rfc3339,
        ) else {
            return false;
        };
        let age = time::OffsetDateTime::now_utc() - at;
        age > self.settings.max_age
    }
}

/// Delivers the endpoint's queue while this node holds its lease, until `stop`'s sender is
/// dropped.
async fn deliver(
    queue: Arc<Queue>,
    client: reqwest::Client,
    mut stop: watch::Receiver<()>,
    wake: Arc<Notify>,
) {
    let mut held = Held::default();
    loop {
        if queue.hold(&mut held).await {
            let run = deliver_queued(&queue, &client, &mut held, &mut stop);
            if run.await.is_err() {
                break;
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => break,
        }
    }
    if held.0.is_some() {
        queue.release().await;
    }
}

/// The deliverer was told to stop.
struct Stopped;

/// Sends every queued batch, oldest first, while the lease holds.
async fn deliver_queued(
    queue: &Queue,
    client: &reqwest::Client,
    held: &mut Held,
    stop: &mut watch::Receiver<()>,
) -> Result<(), Stopped> {
    let keys = match queue.batches().await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(endpoint = %queue.settings.name, error = %e, "listing the event queue failed");
            return Ok(());
        }
    };
    let mut stored: u64 = keys.iter().map(events_in).sum();
    queue.stats.stored.store(stored, Ordering::Relaxed);
    let excess = keys.len().saturating_sub(queue.settings.max_queued);
    for key in &keys[..excess] {
        if queue.store.delete(key).await.is_ok() {
            let n = events_in(key);
            stored = stored.saturating_sub(n);
            queue.dropped(n as usize, "the queue is over its max_queued bound");
        }
    }
    for key in &keys[excess..] {
        stored = stored.saturating_sub(events_in(key));
        let Some(mut batch) = queue.read_batch(key).await else {
            continue; // gone meanwhile: another node delivered it
        };
        let before = batch.len();
        batch.retain(|e| !queue.expired(e));
        queue.dropped(before - batch.len(), "older than max_age");
        let mut failures = 0u32;
        while !batch.is_empty() {
            if !queue.hold(held).await {
                return Ok(()); // another node delivers now
            }
            match send(client, &queue.settings, &batch).await {
                Ok(()) => {
                    queue
                        .stats
                        .sent
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    queue.stats.failed.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if queue.settings.retries.is_some_and(|r| failures > r) {
                        queue.dropped(batch.len(), "its retries ran out");
                        break;
                    }
                    let pause = queue
                        .settings
                        .backoff
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(MAX_BACKOFF.max(queue.settings.backoff));
                    tracing::warn!(endpoint = %queue.settings.name, error = %e, attempt = failures, retry_in = ?pause, "delivering events failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => return Err(Stopped),
                    }
                    let before = batch.len();
                    batch.retain(|e| !queue.expired(e));
                    queue.dropped(before - batch.len(), "older than max_age");
                }
            }
        }
        if let Err(e) = queue.store.delete(key).await {
            tracing::warn!(endpoint = %queue.settings.name, error = %e, "removing delivered events from the queue failed: they may be sent again");
        }
        queue.stats.stored.store(stored, Ordering::Relaxed);
        if stop.has_changed().is_err() {
            return Err(Stopped);
        }
    }
    Ok(())
}

/// How many events the batch at `key` holds, from its name.
fn events_in(key: &Path) -> u64 {
    key.filename()
        .and_then(|f| f.strip_suffix(".json"))
        .and_then(|f| f.rsplit('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One attempt at sending `batch` to the endpoint.
async fn send(
    client: &reqwest::Client,
    settings: &EndpointSettings,
    batch: &[Event],
) -> Result<(), String> {
    let bodies: Vec<(&str, Vec<u8>)> = match settings.format {
        Format::Distribution => {
            let envelope = serde_json::json!({ "events": batch });
            vec![(
                ENVELOPE_MEDIA_TYPE,
                serde_json::to_vec(&envelope).unwrap_or_default(),
            )]
        }
        Format::CloudEvents => batch
            .iter()
            .map(|e| {
                let body = serde_json::to_vec(&cloud_event(e)).unwrap_or_default();
                ("application/cloudevents+json", body)
            })
            .collect(),
    };
    for (content_type, body) in bodies {
        let mut request = client
            .post(&settings.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        for (name, value) in &settings.headers {
            request = request.header(name, value);
        }
        let answer = request.send().await.map_err(|e| e.to_string())?;
        let status = answer.status();
        // Distribution counts 2xx and 3xx as delivered.
        if !(200..400).contains(&status.as_u16()) {
            return Err(format!("the endpoint answered {status}"));
        }
    }
    Ok(())
}

/// `event` as a CloudEvents 1.0 event (structured mode).
fn cloud_event(event: &Event) -> serde_json::Value {
    let subject = match (&event.target.tag, &event.target.digest) {
        (Some(tag), _) => format!("{}:{tag}", event.target.repository),
        (None, Some(digest)) => format!("{}@{digest}", event.target.repository),
        (None, None) => event.target.repository.clone(),
    };
    serde_json::json!({
        "specversion": "1.0",
        "id": event.id,
        "source": format!("//{}", event.source.addr),
        "type": format!("registry.event.{}", event.action.as_str()),
        "subject": subject,
        "time": event.timestamp,
        "datacontenttype": "application/json",
        "data": event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn queue(store: &Arc<dyn ObjectStore>, owner: &str) -> Queue {
        Queue {
            settings: EndpointSettings::new("hook", "http://127.0.0.1:1/hook"),
            stats: Arc::default(),
            store: store.clone(),
            prefix: registry_core::layout::events_queue("hook"),
            lease: registry_core::layout::events_lease("hook"),
            owner: owner.to_owned(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_node_holds_the_lease_and_a_lost_one_is_noticed() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (a, b) = (queue(&store, "a"), queue(&store, "b"));
        let (mut held_a, mut held_b) = (Held::default(), Held::default());
        assert!(a.hold(&mut held_a).await);
        assert!(!b.hold(&mut held_b).await, "a live lease of another node");
        // B's write lands after A read its own back: both believe they won.
        b.write_lease().await.unwrap();
        assert!(b.hold(&mut held_b).await);
        tokio::time::advance(LEASE / 3 + Duration::from_secs(1)).await;
        assert!(
            !a.hold(&mut held_a).await,
            "A sees B's record at its renewal"
        );
        assert!(b.hold(&mut held_b).await, "B renews");
        b.release().await;
        assert!(
            a.hold(&mut held_a).await,
            "a released lease is free at once"
        );
    }

    #[test]
    fn batch_names_count_their_events() {
        let key = Path::from("events/hook/queue/000001764680000000-abc-0000000001-17.json");
        assert_eq!(events_in(&key), 17);
        assert_eq!(events_in(&Path::from("events/hook/queue/odd.json")), 0);
    }
}
