//! Blobs through a repository: a blob is readable in a repository only while that repository's
//! link to it exists; the bytes themselves are shared by every repository.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutPayload};

use super::{blocking_local, mapped, ObjectRegistry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout;
use crate::names::RepoName;
use crate::open::{BIG_READ_CHUNK, BIG_READ_FROM, READ_CHUNK};
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
        if let Some(file) = self.local_file(&key) {
            if let Some(read) = local_read(file, linked, options.range.as_ref()).await? {
                return Ok(read);
            }
        }
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

/// A blob read straight from its file when the storage is a local directory: one blocking
/// call opens it, checks its size and, for a big read, whether its filesystem lets it be
/// mapped ([`mapped::maps_safely`]); then [`file_stream`] reads it. `None` when the file is
/// not the linked blob's bytes (absent, or of another size, or the range reaches past it):
/// the store's own read then answers as it always has. Like the small reads of
/// `get_small_from`, these bypass wrappers of the store: the storage metrics do not count
/// filesystem blob reads (the API metrics do).
async fn local_read(
    file: std::path::PathBuf,
    size: u64,
    range: Option<&GetRange>,
) -> Result<Option<BlobRead>> {
    let range = match range {
        None => 0..size,
        Some(GetRange::Bounded(r)) if r.start <= r.end && r.end <= size => r.clone(),
        Some(_) => return Ok(None),
    };
    let big = is_big(&range);
    let opened = blocking_local(move || match std::fs::File::open(&file) {
        Ok(f) if f.metadata()?.len() != size => Ok(None),
        Ok(f) => {
            let mapped = big && mapped::maps_safely(&f);
            Ok(Some((f, mapped)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await?;
    Ok(opened.map(|(file, mapped)| BlobRead {
        size,
        range: range.clone(),
        stream: file_stream(file, range, mapped),
    }))
}

/// `range` of `file`, read on the blocking pool chunk by chunk: [`READ_CHUNK`] bytes, or
/// [`BIG_READ_CHUNK`] for ranges of at least [`BIG_READ_FROM`]. With `mapped`, each chunk is
/// mapped rather than copied ([`mapped::map_chunk`]; only for files that map safely).
fn file_stream(file: std::fs::File, range: Range<u64>, mapped: bool) -> crate::ByteStream {
    use std::io::{Read, Seek, SeekFrom};
    let chunk = if is_big(&range) {
        BIG_READ_CHUNK
    } else {
        READ_CHUNK as u64
    };
    let file = std::sync::Arc::new(file);
    futures::stream::try_unfold((file, range), move |(file, range)| async move {
        if range.is_empty() {
            return Ok(None);
        }
        let len = (range.end - range.start).min(chunk);
        let (f, start) = (file.clone(), range.start);
        let bytes = tokio::task::spawn_blocking(move || {
            if mapped {
                return mapped::map_chunk(&f, start, len as usize);
            }
            let mut reader = &*f;
            reader.seek(SeekFrom::Start(start))?;
            let mut buf = Vec::with_capacity(len as usize);
            reader.take(len).read_to_end(&mut buf)?;
            if (buf.len() as u64) < len {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok::<_, std::io::Error>(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Some((bytes, (file, start + len..range.end))))
    })
    .boxed()
}

/// Whether a read of `range` is big: read in [`BIG_READ_CHUNK`]s, and mapped where that is safe.
fn is_big(range: &Range<u64>) -> bool {
    range.end - range.start >= BIG_READ_FROM
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn file_reads_cover_the_range_in_chunks_and_fail_on_a_short_file() {
        let content: Vec<u8> = (0..(BIG_READ_FROM + 5)).map(|i| (i % 253) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        // Copied and mapped reads answer alike.
        for mapped in [false, true] {
            file_reads_answer(&file, &content, mapped).await;
        }
    }

    async fn file_reads_answer(file: &std::fs::File, content: &[u8], mapped: bool) {
        let chunks = |range: Range<u64>| {
            file_stream(file.try_clone().unwrap(), range, mapped).collect::<Vec<_>>()
        };
        // A big range: 4 MiB chunks, the last one short.
        let got = chunks(3..content.len() as u64).await;
        let lens: Vec<usize> = got.iter().map(|c| c.as_ref().unwrap().len()).collect();
        assert_eq!(lens[0], BIG_READ_CHUNK as usize);
        assert_eq!(lens.len(), 9);
        let joined: Vec<u8> = got.into_iter().flat_map(|c| c.unwrap()).collect();
        assert!(joined == content[3..], "the bytes differ");
        // A small range: 1 MiB chunks.
        let got = chunks(10..(3 << 20) + 10).await;
        assert_eq!(got.len(), 3);
        assert_eq!(
            &got[2].as_ref().unwrap()[..],
            &content[(2 << 20) + 10..(3 << 20) + 10]
        );
        // A file shorter than the range: an error, not short data passed off as whole.
        let got = chunks(content.len() as u64 - 10..content.len() as u64 + 10).await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].as_ref().unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }
}
