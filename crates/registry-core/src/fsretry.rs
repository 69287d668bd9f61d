//! The local filesystem store, safe against its own directory cleanup. With automatic cleanup
//! on, deleting a directory's last file removes the directory and its empty parents, and a
//! concurrent write below it can find a parent gone while `create_dir_all` works its way down
//! ("Unable to create dir …: No such file or directory", or "File exists" when the directory
//! vanished between its mkdir and its check): under 8 parallel pushes this failed requests with
//! 503. Writes that fail that way are retried; nothing else changes.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Attempts per write before the error is returned.
const ATTEMPTS: usize = 5;

/// Wraps a local filesystem store (see the module documentation).
#[derive(Debug)]
pub(crate) struct DirRaceRetry(pub(crate) Arc<dyn ObjectStore>);

impl fmt::Display for DirRaceRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirRaceRetry({})", self.0)
    }
}

/// Whether `e` is a directory vanishing under a write: an I/O "not found" (a parent gone) or
/// "already exists" (`create_dir_all` saw the directory, which was gone when it looked again)
/// inside a generic store error (a missing or existing object is reported as `NotFound` or
/// `AlreadyExists` instead).
fn is_dir_race(e: &object_store::Error) -> bool {
    let object_store::Error::Generic { source, .. } = e else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{AlreadyExists, NotFound};
            return matches!(io.kind(), NotFound | AlreadyExists);
        }
        cause = c.source();
    }
    false
}

macro_rules! retried {
    ($call:expr) => {{
        let mut attempt = 1;
        loop {
            match $call {
                Err(e) if attempt < ATTEMPTS && is_dir_race(&e) => attempt += 1,
                other => break other,
            }
        }
    }};
}

#[async_trait]
impl ObjectStore for DirRaceRetry {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        retried!(
            self.0
                .put_opts(location, payload.clone(), opts.clone())
                .await
        )
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        retried!(self.0.put_multipart_opts(location, opts.clone()).await)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        retried!(self.0.copy_opts(from, to, options.clone()).await)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        retried!(self.0.rename_opts(from, to, options.clone()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// Writers and deleters in sibling directories under one parent that keeps emptying, on
    /// the filesystem as [`crate::open::open`] opens it: every write succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writes_survive_directory_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let location = crate::open::StorageLocation::Filesystem(dir.path().to_owned());
        let store = crate::open::open(&location).unwrap().scratch.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..300 {
                        let path = Path::from(format!("a/b/{t}-{i}/file"));
                        store.put(&path, vec![1u8; 10].into()).await.unwrap();
                        store.delete(&path).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
