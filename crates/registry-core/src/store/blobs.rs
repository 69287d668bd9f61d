//! Blobs through a repository: a blob is readable in a repository only while that repository's
//! link to it exists; the bytes themselves are shared by every repository.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutPayload};

use super::ObjectRegistry;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout;
use crate::names::RepoName;
use crate::storage::{BlobRead, BlobStore};

impl ObjectRegistry {
    /// The size recorded in a repository's link to a blob, `None` when not linked.
    pub(super) async fn linked_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        self.link_size(repo, digest, false).await
    }

    /// [`Self::linked_size`] for a pull: possibly from the metadata cache.
    async fn linked_size_cached(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.link_size(repo, digest, true).await
    }

    async fn link_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cached: bool,
    ) -> Result<Option<u64>> {
        if cached {
            let key = layout::layer_link_text(repo, digest);
            return self.get_cached(key, link_size).await;
        }
        let path = layout::layer_link(repo, digest);
        match self.get_small(&path).await? {
            Some(raw) => link_size(&path, raw).map(Some),
            None => Ok(None),
        }
    }

    /// Links the stored blob `digest` into `repo` once `verify` found it stored, safely
    /// against a concurrent collection (the link depends on the bytes); `false` when it is not
    /// stored, or is being collected.
    async fn link_stored<V>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        verify: impl Fn() -> V,
    ) -> Result<bool>
    where
        V: std::future::Future<Output = Result<()>>,
    {
        let commit = self.link_blob(repo, digest, size);
        match self
            .depend_on(std::slice::from_ref(digest), verify, commit)
            .await
        {
            Ok(()) => Ok(true),
            Err(Error::BlobUnknown(_) | Error::Doomed(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes an existing global blob visible in `repo`.
    pub(super) async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        self.ensure_repo(repo).await?;
        let path = layout::layer_link(repo, digest);
        self.put_small(&path, PutPayload::from(size.to_string().into_bytes()))
            .await
    }
}

#[async_trait]
impl BlobStore for ObjectRegistry {
    async fn blob_url(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        let Some(p) = &self.presigner else {
            return Ok(None);
        };
        let size = self.blob_size(repo, digest).await?;
        let key = self.blob_bytes_key(layout::blob(digest), size).await?;
        let path = match p.prefix.as_str() {
            "" => key,
            prefix => object_store::path::Path::from(format!("{prefix}/{key}")),
        };
        let url = p
            .signer
            .signed_url(object_store::signer::Method::GET, &path, p.ttl)
            .await?;
        Ok(Some(url.to_string()))
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.linked_size_cached(repo, digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))
    }

    async fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead> {
        let Some(linked) = self.linked_size_cached(repo, digest).await? else {
            return Err(Error::BlobUnknown(digest.clone()));
        };
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let key = layout::blob(digest);
        let result = match self.get_blob_bytes(&key, linked, options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::BlobUnknown(digest.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let stream = result.into_stream().map_err(std::io::Error::other).boxed();
        Ok(BlobRead {
            size,
            range,
            stream,
        })
    }

    async fn blob_mount(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let Some(size) = self.linked_size(from, digest).await? else {
            return Ok(None);
        };
        let verify = || async {
            if self.exists(&layout::blob(digest)).await? {
                Ok(())
            } else {
                Err(Error::BlobUnknown(digest.clone()))
            }
        };
        // Not mountable now: the client uploads it instead.
        Ok(self
            .link_stored(repo, digest, size, verify)
            .await?
            .then_some(size))
    }

    async fn blob_adopt(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<bool> {
        let verify = || async {
            let meta = match self.store.head(&layout::blob(digest)).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::BlobUnknown(digest.clone()))
                }
                Err(e) => return Err(e.into()),
            };
            if self.blob_size_at(&meta).await? == size {
                Ok(())
            } else {
                Err(Error::BlobUnknown(digest.clone()))
            }
        };
        self.link_stored(repo, digest, size, verify).await
    }

    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.linked_size(repo, digest).await?.is_none() {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        self.delete_quiet(&layout::layer_link(repo, digest)).await
    }
}

/// The size a blob link holds.
pub(super) fn link_size(path: &Path, raw: Bytes) -> Result<u64> {
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::Corrupt {
            path: path.to_string(),
            reason: "link does not hold a size".into(),
        })
}
