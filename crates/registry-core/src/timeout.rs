//! `TimeoutStore`: an `ObjectStore` wrapper that bounds the operations on small objects, so a
//! backend that accepts connections but does not answer (a stalled S3 server) fails requests
//! within seconds instead of hanging them until the transport gives up. Bounded are: heads,
//! reads until their response arrives (the body then streams under the transport's own stall
//! timeout), puts of at most [`SMALL_PUT`] bytes, starting a multipart upload, each page of a
//! listing and each deletion. Copies, renames and multipart parts move blob data and are left
//! to the transport's stall timeout. A bound that passes is an error like any other storage
//! failure (clients get 503).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Puts up to this size count as small.
pub const SMALL_PUT: usize = 1024 * 1024;

/// An object store whose operations on small objects are bounded by a timeout.
#[derive(Debug)]
pub struct TimeoutStore {
    inner: Arc<dyn ObjectStore>,
    timeout: Duration,
}

#[derive(Debug)]
struct TimedOut(&'static str, Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not answer within {:?}", self.0, self.1)
    }
}

impl std::error::Error for TimedOut {}

impl TimeoutStore {
    /// Wraps `inner`, bounding operations on small objects by `timeout`.
    pub fn new(inner: Arc<dyn ObjectStore>, timeout: Duration) -> Self {
        TimeoutStore { inner, timeout }
    }

    async fn bounded<T>(&self, op: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
        bound(op, self.timeout, f).await
    }

    /// Bounds the wait for each item of `stream`.
    fn bounded_stream<T: Send + 'static>(
        &self,
        op: &'static str,
        stream: BoxStream<'static, Result<T>>,
    ) -> BoxStream<'static, Result<T>> {
        let timeout = self.timeout;
        futures::stream::unfold(Some(stream), move |stream| async move {
            let mut stream = stream?;
            match bound(op, timeout, async { Ok(stream.next().await) }).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }
}

async fn bound<T>(
    op: &'static str,
    timeout: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(object_store::Error::Generic {
            store: "storage",
            source: Box::new(TimedOut(op, timeout)),
        }),
    }
}

impl fmt::Display for TimeoutStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timeout({:?}, {})", self.timeout, self.inner)
    }
}

#[async_trait]
impl ObjectStore for TimeoutStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if payload.content_length() <= SMALL_PUT {
            let put = self.inner.put_opts(location, payload, opts);
            self.bounded("a put", put).await
        } else {
            self.inner.put_opts(location, payload, opts).await
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let start = self.inner.put_multipart_opts(location, opts);
        self.bounded("starting a multipart upload", start).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { "a head" } else { "a read" };
        self.bounded(op, self.inner.get_opts(location, options))
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.bounded_stream("a delete", self.inner.delete_stream(locations))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.bounded_stream("a listing", self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.bounded_stream("a listing", self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.bounded("a listing", self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    use super::*;

    /// A store that never answers.
    #[derive(Debug)]
    struct Stalled;

    impl fmt::Display for Stalled {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Stalled")
        }
    }

    #[async_trait]
    impl ObjectStore for Stalled {
        async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> Result<PutResult> {
            std::future::pending().await
        }
        async fn put_multipart_opts(
            &self,
            _: &Path,
            _: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            std::future::pending().await
        }
        async fn get_opts(&self, _: &Path, _: GetOptions) -> Result<GetResult> {
            std::future::pending().await
        }
        fn delete_stream(
            &self,
            _: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            futures::stream::pending().boxed()
        }
        fn list(&self, _: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            futures::stream::pending().boxed()
        }
        async fn list_with_delimiter(&self, _: Option<&Path>) -> Result<ListResult> {
            std::future::pending().await
        }
        async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> Result<()> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn small_operations_give_up_big_ones_wait() {
        let store = TimeoutStore::new(Arc::new(Stalled), Duration::from_secs(5));
        let p = Path::from("a");
        assert!(store.head(&p).await.is_err());
        assert!(store.get(&p).await.is_err());
        assert!(store.put(&p, PutPayload::from_static(b"x")).await.is_err());
        assert!(store.delete(&p).await.is_err());
        let listed: Vec<_> = store.list(None).collect().await;
        assert!(matches!(listed.as_slice(), [Err(_)]), "{listed:?}");
        assert!(store.list_with_delimiter(None).await.is_err());
        let err = store.head(&p).await.unwrap_err().to_string();
        assert!(err.contains("did not answer within 5s"), "{err}");
        let big = PutPayload::from(vec![0u8; SMALL_PUT + 1]);
        let waiting = tokio::time::timeout(Duration::from_secs(60), store.put(&p, big)).await;
        assert!(waiting.is_err(), "a big put is not bounded here");
    }

    #[tokio::test]
    async fn answers_pass_through() {
        let store = TimeoutStore::new(Arc::new(InMemory::new()), Duration::from_secs(5));
        let p = Path::from("a/b");
        store.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "x");
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        store.delete(&p).await.unwrap();
        assert!(matches!(
            store.head(&p).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}
