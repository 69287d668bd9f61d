//! The storage traits the HTTP layer talks to. Every method is atomic from a reader's point of
//! view: a blob, manifest or tag is either wholly visible or absent, and a successful return means
//! the data is durable on the backend. Implementations hold no state that another node could not
//! reconstruct from the backend.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::digest::{Algorithm, Digest};
use crate::error::Result;
use crate::manifest::Descriptor;
use crate::names::{Reference, RepoName, Tag};

/// A request body or blob read, streamed chunk by chunk.
pub type ByteStream = BoxStream<'static, std::result::Result<Bytes, std::io::Error>>;

/// A blob being read.
pub struct BlobRead {
    /// The whole blob's size.
    pub size: u64,
    /// The byte range being returned (the whole blob when no range was asked for).
    pub range: Range<u64>,
    /// The bytes of `range`.
    pub stream: ByteStream,
}

/// Where an upload session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadStatus {
    /// The session id (a UUID).
    pub id: String,
    /// Bytes received so far.
    pub size: u64,
}

/// A stored manifest's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestInfo {
    /// Digest of the exact bytes.
    pub digest: Digest,
    /// Media type the manifest was pushed with.
    pub media_type: String,
    /// Size in bytes.
    pub size: u64,
}

/// The result of storing a manifest.
#[derive(Clone, Debug)]
pub struct PutManifest {
    /// Digest of the stored bytes.
    pub digest: Digest,
    /// The subject the manifest refers to, if any.
    pub subject: Option<Digest>,
}

/// One page of a sorted listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The entries, in lexical order.
    pub items: Vec<T>,
    /// Whether entries follow the last one returned.
    pub more: bool,
}

/// Blobs as seen through one repository.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// The blob's size, if it is linked into `repo`.
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64>;
    /// Streams the blob (or `range` of it; the range is clamped to the size by the caller).
    async fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead>;
    /// Links a blob from `from` into `repo`. `Ok(None)` when `from` does not hold it.
    async fn blob_mount(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>>;
    /// Unlinks a blob from `repo`. The bytes stay until garbage collection.
    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()>;
    /// A short-lived URL the blob can be fetched from directly, when the backend offers one
    /// (presigned S3 URLs), after checking like [`BlobStore::blob_size`] that the blob is
    /// linked into `repo`; `None` (without any check) when reads go through the registry.
    async fn blob_url(&self, _repo: &RepoName, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }
    /// Links into `repo` a blob of `size` bytes that the storage holds, whichever repository
    /// holds it; `Ok(false)` when it holds no such blob. For filling a pull-through cache
    /// after the upstream confirmed that its repository has the blob: it bypasses the
    /// isolation of repositories, so it must never be reachable by a client's request alone.
    async fn blob_adopt(&self, _repo: &RepoName, _digest: &Digest, _size: u64) -> Result<bool> {
        Ok(false)
    }
}

/// Upload sessions. Their whole state lives in the backend, so any node can continue one.
#[async_trait]
pub trait UploadStore: Send + Sync {
    /// Opens a session whose content will be hashed with `algorithm`.
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadStatus>;
    /// The session's progress.
    async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus>;
    /// Appends a chunk. `start`, when given, must equal the current size; `len`, when given, is
    /// the number of bytes the client declared.
    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus>;
    /// Appends an optional last chunk, verifies the digest, makes the blob visible in `repo`
    /// and closes the session. Returns the blob's size. On a mismatch the session is removed.
    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last: Option<(Option<u64>, ByteStream)>,
    ) -> Result<u64>;
    /// Removes the session and its data.
    async fn upload_cancel(&self, repo: &RepoName, id: &str) -> Result<()>;
    /// Removes sessions last touched longer ago than `max_age`; returns how many.
    async fn upload_purge(&self, max_age: Duration) -> Result<usize>;
}

/// Manifests and tags.
#[async_trait]
pub trait ManifestStore: Send + Sync {
    /// Validates and stores a manifest under `reference` and the extra `tags`.
    async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[Tag],
    ) -> Result<PutManifest>;
    /// Stores a manifest fetched from an upstream registry, under `reference` and `tags`,
    /// like [`ManifestStore::manifest_put`] but without requiring what it references: a
    /// pull-through cache holds an image's layers, or an index's platforms, once they are
    /// pulled. The bytes are still validated, and must hash to a digest `reference` names.
    async fn manifest_cache(
        &self,
        _repo: &RepoName,
        _reference: &Reference,
        _content_type: Option<&str>,
        _bytes: Bytes,
        _tags: &[Tag],
    ) -> Result<PutManifest> {
        Err(crate::error::Error::Unsupported(
            "this storage cannot hold a pull-through cache".into(),
        ))
    }
    /// Records that a client used the pull-through cache `repo` now (what garbage collection's
    /// `mirror_max_unused` measures from). Callers need not call it more than about hourly.
    async fn cache_used(&self, _repo: &RepoName) -> Result<()> {
        Ok(())
    }
    /// Identity of a manifest, without its bytes.
    async fn manifest_info(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestInfo>;
    /// A manifest with its bytes.
    async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(ManifestInfo, Bytes)>;
    /// Deletes a tag, or a manifest with every tag that points at it.
    async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()>;
    /// Tags of `repo` after `last`, at most `n`.
    async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<Page<Tag>>;
    /// Every tag of `repo` with when it was last set, sorted by tag, for people browsing (the
    /// web interface): one listing, no read per tag. Storages that do not know when answer
    /// with [`ManifestStore::tags`] and `None`.
    async fn tag_times(&self, repo: &RepoName) -> Result<Vec<(Tag, Option<SystemTime>)>> {
        let page = self.tags(repo, None, None).await?;
        Ok(page.items.into_iter().map(|t| (t, None)).collect())
    }
}

/// The referrers API.
#[async_trait]
pub trait ReferrerStore: Send + Sync {
    /// Descriptors of manifests in `repo` whose subject is `subject`, sorted by digest.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>>;
}

/// The catalog and backend health.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Repository names after `last`, at most `n`.
    async fn repositories(&self, last: Option<&str>, n: Option<usize>) -> Result<Page<RepoName>>;
    /// Whether the backend answers.
    async fn health(&self) -> Result<()>;
}

/// Everything the registry needs from storage.
pub trait Storage: BlobStore + UploadStore + ManifestStore + ReferrerStore + CatalogStore {}

impl<T: BlobStore + UploadStore + ManifestStore + ReferrerStore + CatalogStore> Storage for T {}

/// Cuts a sorted list into the page after `last` of at most `n` entries.
pub fn paginate<T: Clone, F: Fn(&T) -> &str>(
    sorted: &[T],
    last: Option<&str>,
    n: Option<usize>,
    key: F,
) -> Page<T> {
    let start = match last {
        Some(l) => sorted.partition_point(|x| key(x) <= l),
        None => 0,
    };
    let rest = &sorted[start..];
    let take = n.map_or(rest.len(), |n| n.min(rest.len()));
    Page {
        items: rest[..take].to_vec(),
        // `n=0` asks for an empty page with no continuation.
        more: n.is_some_and(|n| n > 0 && rest.len() > n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let v = vec!["a", "b", "c", "d"];
        let p = paginate(&v, None, Some(2), |s| s);
        assert_eq!(
            p,
            Page {
                items: vec!["a", "b"],
                more: true
            }
        );
        let p = paginate(&v, Some("b"), Some(2), |s| s);
        assert_eq!(
            p,
            Page {
                items: vec!["c", "d"],
                more: false
            }
        );
        let p = paginate(&v, Some("bb"), None, |s| s);
        assert_eq!(p.items, vec!["c", "d"]);
        let p = paginate(&v, None, Some(0), |s| s);
        assert_eq!(
            p,
            Page {
                items: vec![],
                more: false
            }
        );
    }
}
