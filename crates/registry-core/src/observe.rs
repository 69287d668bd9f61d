//! `ObservedStore` (and `ObservedMultipart` for multipart uploads): an `ObjectStore` wrapper that reports the duration and outcome of every
//! backend operation to a [`StoreObserver`] (metrics, tracing). It changes no behaviour. Streaming
//! operations (list, delete_stream) report when their stream ends; reads report when the object's
//! head arrives, not when its last byte does.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Receives one call per backend operation.
pub trait StoreObserver: Send + Sync + fmt::Debug + 'static {
    /// `op` is a short name (`put`, `get`, `list`, …); `ok` is false when the operation failed
    /// for any reason other than the object not existing.
    fn observe(&self, op: &'static str, elapsed: Duration, ok: bool);
}

/// An object store that reports each operation to an observer.
#[derive(Debug)]
pub struct ObservedStore {
    inner: Arc<dyn ObjectStore>,
    observer: Arc<dyn StoreObserver>,
}

impl ObservedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, observer: Arc<dyn StoreObserver>) -> Self {
        ObservedStore { inner, observer }
    }

    fn record<T>(&self, op: &'static str, start: Instant, result: &Result<T>) {
        let ok = match result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => true,
            Err(_) => false,
        };
        self.observer.observe(op, start.elapsed(), ok);
    }

    fn observe_stream<T: Send + 'static>(
        &self,
        op: &'static str,
        stream: BoxStream<'static, Result<T>>,
    ) -> BoxStream<'static, Result<T>> {
        let mut guard = StreamReport {
            observer: self.observer.clone(),
            op,
            start: Instant::now(),
            ok: true,
        };
        stream
            .inspect(move |item| {
                // Borrow the whole guard so the closure owns it (not just its `ok` field):
                // the report is sent when the stream is dropped.
                let report = &mut guard;
                if item.is_err() {
                    report.ok = false;
                }
            })
            .boxed()
    }
}

/// Reports a streaming operation when its stream is dropped (finished or abandoned).
struct StreamReport {
    observer: Arc<dyn StoreObserver>,
    op: &'static str,
    start: Instant,
    ok: bool,
}

impl Drop for StreamReport {
    fn drop(&mut self) {
        self.observer
            .observe(self.op, self.start.elapsed(), self.ok);
    }
}

impl fmt::Display for ObservedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Observed({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ObservedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let start = Instant::now();
        let r = self.inner.put_opts(location, payload, opts).await;
        self.record("put", start, &r);
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let start = Instant::now();
        let r = self.inner.put_multipart_opts(location, opts).await;
        self.record("put_multipart", start, &r);
        r
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let start = Instant::now();
        let op = if options.head { "head" } else { "get" };
        let r = self.inner.get_opts(location, options).await;
        self.record(op, start, &r);
        r
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let start = Instant::now();
        let r = self.inner.get_ranges(location, ranges).await;
        self.record("get_ranges", start, &r);
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.observe_stream("delete", self.inner.delete_stream(locations))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.observe_stream("list", self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.observe_stream("list", self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let start = Instant::now();
        let r = self.inner.list_with_delimiter(prefix).await;
        self.record("list_with_delimiter", start, &r);
        r
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.copy_opts(from, to, options).await;
        self.record("copy", start, &r);
        r
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.rename_opts(from, to, options).await;
        self.record("rename", start, &r);
        r
    }
}

/// Multipart uploads that report each operation to an observer, as [`ObservedStore`] does.
pub struct ObservedMultipart {
    inner: Arc<dyn MultipartStore>,
    observer: Arc<dyn StoreObserver>,
}

impl fmt::Debug for ObservedMultipart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedMultipart")
            .field("observer", &self.observer)
            .finish_non_exhaustive()
    }
}

impl ObservedMultipart {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn MultipartStore>, observer: Arc<dyn StoreObserver>) -> Self {
        ObservedMultipart { inner, observer }
    }

    fn record<T>(&self, op: &'static str, start: Instant, result: &Result<T>) {
        let ok = !matches!(result, Err(e) if !matches!(e, object_store::Error::NotFound { .. }));
        self.observer.observe(op, start.elapsed(), ok);
    }
}

#[async_trait]
impl MultipartStore for ObservedMultipart {
    async fn create_multipart(&self, path: &Path) -> Result<MultipartId> {
        let start = Instant::now();
        let r = self.inner.create_multipart(path).await;
        self.record("create_multipart", start, &r);
        r
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> Result<PartId> {
        let start = Instant::now();
        let r = self.inner.put_part(path, id, part_idx, data).await;
        self.record("put_part", start, &r);
        r
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        let start = Instant::now();
        let r = self.inner.complete_multipart(path, id, parts).await;
        self.record("complete_multipart", start, &r);
        r
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.abort_multipart(path, id).await;
        self.record("abort_multipart", start, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    use super::*;

    #[derive(Debug, Default)]
    struct Log(Mutex<Vec<(&'static str, bool)>>);

    impl StoreObserver for Log {
        fn observe(&self, op: &'static str, _: Duration, ok: bool) {
            self.0.lock().unwrap().push((op, ok));
        }
    }

    #[tokio::test]
    async fn reports_each_operation() {
        let log = Arc::new(Log::default());
        let store = ObservedStore::new(Arc::new(InMemory::new()), log.clone());
        let p = Path::from("a/b");
        store.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        store.get(&p).await.unwrap();
        assert!(store.head(&Path::from("missing")).await.is_err());
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        store.rename(&p, &Path::from("c")).await.unwrap();
        let ops = log.0.lock().unwrap().clone();
        assert_eq!(
            ops,
            [
                ("put", true),
                ("get", true),
                ("head", true),
                ("list", true),
                ("rename", true)
            ]
        );
    }
}
