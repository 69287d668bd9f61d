//! [`Proxy`] as a [`Storage`]: requests for repositories no mirror serves go straight to the
//! local storage; the others are answered from the cache, filled from the upstream on a miss.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use registry_core::manifest::Descriptor;
use registry_core::storage::{
    BlobRead, BlobStore, ByteStream, CatalogStore, ManifestInfo, ManifestStore, Page, PutManifest,
    ReferrerStore, UploadStatus, UploadStore,
};
use registry_core::{Algorithm, Digest, Error, Reference, RepoName, Result, Tag};

use crate::fetch::{Job, Run};
use crate::{Proxy, Route};

/// Whether the local storage's answer means "not here" (so a mirror may have it).
fn unknown(e: &Error) -> bool {
    matches!(
        e,
        Error::BlobUnknown(_) | Error::ManifestUnknown(_) | Error::NameUnknown(_)
    )
}

/// Through the default mirror, the instance's own answer comes first: `Some` unless it has
/// none (then the mirror answers).
async fn own_answer<T>(
    route: &Route<'_>,
    ask: impl std::future::Future<Output = Result<T>>,
) -> Option<Result<T>> {
    if !route.own {
        return None;
    }
    match ask.await {
        Err(e) if unknown(&e) => None,
        other => Some(other),
    }
}

/// Whether an error came from the upstream (so a cached answer may stand in).
fn upstream_failed(e: &Error) -> bool {
    matches!(e, Error::Upstream(_) | Error::UpstreamUnavailable(_))
}

impl Proxy {
    /// Refuses writes under a mirror's prefix.
    fn writable(&self, repo: &RepoName) -> Result<()> {
        match self.route(repo)? {
            Some(r) if !r.own => Err(Error::Denied(format!(
                "{}/ is a read-only mirror of {}: push to a repository outside it",
                r.mirror.prefix, r.mirror.upstream.host
            ))),
            _ => Ok(()),
        }
    }

    /// The repository the local storage knows `repo` as: its cache under a mirror's prefix.
    fn local_name(&self, repo: &RepoName) -> Result<RepoName> {
        Ok(match self.route(repo)? {
            Some(r) if !r.own => r.local,
            _ => repo.clone(),
        })
    }

    /// A manifest through a mirror (the instance's own, first, for the default mirror).
    async fn mirrored_manifest(
        &self,
        route: &Route<'_>,
        asked: &RepoName,
        reference: &Reference,
    ) -> Result<(ManifestInfo, Bytes)> {
        if let Some(own) = own_answer(route, self.inner.manifest_get(asked, reference)).await {
            return own;
        }
        self.used(route);
        match reference {
            Reference::Digest(d) => match self.inner.manifest_get(&route.local, reference).await {
                Err(e) if unknown(&e) => {
                    let filled = self.fill_manifest(route, d, None).await;
                    if filled.as_ref().is_err_and(upstream_failed) {
                        route.mirror.stats.error();
                    }
                    filled
                }
                Ok(found) => {
                    route.mirror.stats.hit();
                    Ok(found)
                }
                Err(e) => Err(e),
            },
            Reference::Tag(t) => self.tagged(route, t).await,
        }
    }

    /// A manifest by tag: from the cache while the upstream's confirmation is fresh, else as
    /// the upstream says now (or from the cache when the upstream cannot say).
    async fn tagged(&self, route: &Route<'_>, tag: &Tag) -> Result<(ManifestInfo, Bytes)> {
        let reference = Reference::Tag(tag.clone());
        let cached = match self.inner.manifest_get(&route.local, &reference).await {
            Ok(found) => Some(found),
            Err(e) if unknown(&e) => None,
            Err(e) => return Err(e),
        };
        if let Some(found) = &cached {
            if self.fresh(route, tag) {
                route.mirror.stats.hit();
                return Ok(found.clone());
            }
        }
        let upstream = &route.mirror.upstream;
        let head = upstream.manifest_head(&route.upstream, tag.as_str()).await;
        let answer = match head {
            Ok(None) => {
                self.forget(route, tag);
                return Err(Error::ManifestUnknown(tag.to_string()));
            }
            Ok(Some(head)) => match (head.digest, &cached) {
                (Some(d), Some(found)) if found.0.digest == d => {
                    route.mirror.stats.hit();
                    Ok(found.clone())
                }
                (Some(d), _) => self.fill_manifest(route, &d, Some(tag)).await,
                (None, _) => self.fill_tag(route, tag).await,
            },
            Err(e) => Err(e),
        };
        match answer {
            Ok(found) => {
                self.confirm(route, tag);
                Ok(found)
            }
            Err(e) if upstream_failed(&e) => {
                route.mirror.stats.error();
                match cached {
                    Some(found) => {
                        route.mirror.stats.stale();
                        tracing::warn!(repo = %route.local, %tag, error = %e, "upstream unavailable: serving the cached tag");
                        Ok(found)
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Stores the manifest `digest` (tagged `tag`) from the upstream, unless it is stored.
    async fn fill_manifest(
        &self,
        route: &Route<'_>,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<(ManifestInfo, Bytes)> {
        let by_digest = Reference::Digest(digest.clone());
        let (content_type, bytes) = match self.inner.manifest_get(&route.local, &by_digest).await {
            Ok((info, bytes)) => (Some(info.media_type), bytes),
            Err(e) if unknown(&e) => {
                let upstream = &route.mirror.upstream;
                let fetched = self.fetch_manifest(route, &digest.to_string()).await?;
                let actual = Digest::of(digest.algorithm(), &fetched.bytes);
                if &actual != digest {
                    return Err(upstream.bad(format!(
                        "manifest {digest} of {} hashes to {actual}: not stored",
                        route.upstream
                    )));
                }
                (fetched.content_type, fetched.bytes)
            }
            Err(e) => return Err(e),
        };
        let tags: Vec<Tag> = tag.into_iter().cloned().collect();
        self.store_manifest(route, &by_digest, content_type.as_deref(), bytes, &tags)
            .await?;
        self.inner.manifest_get(&route.local, &by_digest).await
    }

    /// A manifest from the upstream, by tag or digest (counted as a miss).
    async fn fetch_manifest(
        &self,
        route: &Route<'_>,
        reference: &str,
    ) -> Result<crate::upstream::FetchedManifest> {
        let fetched = route
            .mirror
            .upstream
            .manifest_get(&route.upstream, reference, self.options.manifest_max_bytes)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(reference.to_owned()))?;
        let stats = &route.mirror.stats;
        stats.miss();
        stats.upstream_bytes(fetched.bytes.len() as u64);
        Ok(fetched)
    }

    /// Stores what the upstream serves for `tag` when it does not say the digest first.
    async fn fill_tag(&self, route: &Route<'_>, tag: &Tag) -> Result<(ManifestInfo, Bytes)> {
        let fetched = self.fetch_manifest(route, tag.as_str()).await?;
        let reference = Reference::Tag(tag.clone());
        let put = self
            .store_manifest(
                route,
                &reference,
                fetched.content_type.as_deref(),
                fetched.bytes,
                &[],
            )
            .await?;
        self.inner
            .manifest_get(&route.local, &Reference::Digest(put.digest))
            .await
    }

    async fn store_manifest(
        &self,
        route: &Route<'_>,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[Tag],
    ) -> Result<PutManifest> {
        let stored = self
            .inner
            .manifest_cache(&route.local, reference, content_type, bytes, tags)
            .await;
        stored.map_err(|e| match e {
            // What the upstream sent, not what the client did.
            Error::ManifestInvalid(_) | Error::Unsupported(_) | Error::DigestMismatch { .. } => {
                route.mirror.upstream.bad(format!(
                    "its manifest {reference} of {} cannot be cached: {e}",
                    route.upstream
                ))
            }
            other => other,
        })
    }

    /// The running or a new fetch of a blob the cache lacks; `None` when the local storage
    /// turned out to hold its bytes (now linked into the cache's repository).
    async fn fetch(
        &self,
        route: &Route<'_>,
        digest: &Digest,
    ) -> Result<Option<std::sync::Arc<crate::fetch::Fetch>>> {
        let storage = self.inner.clone();
        let local = route.local.clone();
        let name = route.upstream.clone();
        let stats = route.mirror.stats.clone();
        let spool_dir = self.options.spool_dir.clone();
        let d = digest.clone();
        let upstream = route.mirror.upstream.clone();
        let started = self
            .fetches
            .join_or_start(&route.local, digest, async move {
                let response = upstream
                    .blob_get(&name, &d)
                    .await?
                    .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
                let size = crate::upstream::declared_length(&response)
                    .ok_or_else(|| upstream.bad(format!("blob {d} without Content-Length")))?;
                // A layer another repository already holds is linked, not fetched.
                if storage.blob_adopt(&local, &d, size).await? {
                    return Ok(None);
                }
                stats.miss();
                let run = Run {
                    storage,
                    local,
                    digest: d,
                    size,
                    stats,
                    upstream,
                };
                Ok(Some(Job {
                    run,
                    response,
                    spool_dir,
                }))
            })
            .await;
        if let Err(e) = &started {
            if upstream_failed(e) {
                route.mirror.stats.error();
            }
        }
        started
    }
}

#[async_trait]
impl BlobStore for Proxy {
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let Some(route) = self.route(repo)? else {
            return self.inner.blob_size(repo, digest).await;
        };
        if let Some(own) = own_answer(&route, self.inner.blob_size(repo, digest)).await {
            return own;
        }
        match self.inner.blob_size(&route.local, digest).await {
            Err(e) if unknown(&e) => {}
            Ok(size) => {
                route.mirror.stats.hit();
                return Ok(size);
            }
            Err(e) => return Err(e),
        }
        let upstream = &route.mirror.upstream;
        let size = upstream
            .blob_head(&route.upstream, digest)
            .await
            .inspect_err(|_| route.mirror.stats.error())?
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))?;
        self.inner.blob_adopt(&route.local, digest, size).await?;
        Ok(size)
    }

    async fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead> {
        let Some(route) = self.route(repo)? else {
            return self.inner.blob_read(repo, digest, range).await;
        };
        let own = self.inner.blob_read(repo, digest, range.clone());
        if let Some(own) = own_answer(&route, own).await {
            return own;
        }
        self.used(&route);
        match self
            .inner
            .blob_read(&route.local, digest, range.clone())
            .await
        {
            Err(e) if unknown(&e) => {}
            Ok(read) => {
                route.mirror.stats.hit();
                return Ok(read);
            }
            Err(e) => return Err(e),
        }
        match self.fetch(&route, digest).await? {
            None => self.inner.blob_read(&route.local, digest, range).await,
            Some(fetch) => {
                let size = fetch.size();
                let range = range.map_or(0..size, |r| r.start.min(size)..r.end.min(size));
                Ok(BlobRead {
                    size,
                    range: range.clone(),
                    stream: fetch.read(range),
                })
            }
        }
    }

    async fn blob_mount(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        self.writable(repo)?;
        let from = self.local_name(from)?;
        self.inner.blob_mount(repo, &from, digest).await
    }

    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let local = self.local_name(repo)?;
        self.inner.blob_delete(&local, digest).await
    }

    async fn blob_url(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        let Some(route) = self.route(repo)? else {
            return self.inner.blob_url(repo, digest).await;
        };
        if let Some(own) = own_answer(&route, self.inner.blob_url(repo, digest)).await {
            return own;
        }
        match self.inner.blob_url(&route.local, digest).await {
            // Not cached: `blob_read` fetches it.
            Err(e) if unknown(&e) => Ok(None),
            other => other,
        }
    }

    async fn blob_adopt(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<bool> {
        self.inner.blob_adopt(repo, digest, size).await
    }
}

#[async_trait]
impl UploadStore for Proxy {
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadStatus> {
        self.writable(repo)?;
        self.inner.upload_start(repo, algorithm).await
    }

    async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus> {
        self.inner.upload_status(repo, id).await
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus> {
        self.inner.upload_append(repo, id, start, len, body).await
    }

    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last: Option<(Option<u64>, ByteStream)>,
    ) -> Result<u64> {
        self.inner.upload_finish(repo, id, digest, last).await
    }

    async fn upload_cancel(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.inner.upload_cancel(repo, id).await
    }

    async fn upload_purge(&self, max_age: Duration) -> Result<usize> {
        self.inner.upload_purge(max_age).await
    }
}

#[async_trait]
impl ManifestStore for Proxy {
    async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[Tag],
    ) -> Result<PutManifest> {
        self.writable(repo)?;
        self.inner
            .manifest_put(repo, reference, content_type, bytes, tags)
            .await
    }

    async fn manifest_cache(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[Tag],
    ) -> Result<PutManifest> {
        self.inner
            .manifest_cache(repo, reference, content_type, bytes, tags)
            .await
    }

    async fn cache_used(&self, repo: &RepoName) -> Result<()> {
        self.inner.cache_used(repo).await
    }

    async fn manifest_info(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestInfo> {
        match self.route(repo)? {
            None => self.inner.manifest_info(repo, reference).await,
            Some(route) => Ok(self.mirrored_manifest(&route, repo, reference).await?.0),
        }
    }

    async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(ManifestInfo, Bytes)> {
        match self.route(repo)? {
            None => self.inner.manifest_get(repo, reference).await,
            Some(route) => self.mirrored_manifest(&route, repo, reference).await,
        }
    }

    async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let local = self.local_name(repo)?;
        self.inner.manifest_delete(&local, reference).await
    }

    /// What is stored here (the upstream is not asked): the repository of that name, else
    /// the cache the name routes to, with its tags as last fetched.
    async fn tag_times(&self, repo: &RepoName) -> Result<Vec<(Tag, Option<SystemTime>)>> {
        match (self.inner.tag_times(repo).await, self.route(repo)?) {
            (Err(Error::NameUnknown(_)), Some(route)) if route.local != *repo => {
                self.inner.tag_times(&route.local).await
            }
            (answer, _) => answer,
        }
    }

    async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<Page<Tag>> {
        let Some(route) = self.route(repo)? else {
            return self.inner.tags(repo, last, n).await;
        };
        if let Some(own) = own_answer(&route, self.inner.tags(repo, last, n)).await {
            return own;
        }
        let upstream = &route.mirror.upstream;
        match upstream.tags(&route.upstream, last, n).await {
            Ok(Some((tags, more))) => Ok(Page {
                items: tags.iter().filter_map(|t| t.parse().ok()).collect(),
                more,
            }),
            Ok(None) => Err(Error::NameUnknown(repo.to_string())),
            Err(e) => {
                route.mirror.stats.error();
                match self.inner.tags(&route.local, last, n).await {
                    Ok(page) => {
                        route.mirror.stats.stale();
                        tracing::warn!(repo = %route.local, error = %e, "upstream unavailable: listing the cached tags");
                        Ok(page)
                    }
                    Err(_) => Err(e),
                }
            }
        }
    }
}

#[async_trait]
impl ReferrerStore for Proxy {
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let Some(route) = self.route(repo)? else {
            return self.inner.referrers(repo, subject).await;
        };
        if route.own {
            let own = self.inner.referrers(repo, subject).await?;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        self.inner.referrers(&route.local, subject).await
    }
}

#[async_trait]
impl CatalogStore for Proxy {
    async fn repositories(&self, last: Option<&str>, n: Option<usize>) -> Result<Page<RepoName>> {
        self.inner.repositories(last, n).await
    }

    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }
}
