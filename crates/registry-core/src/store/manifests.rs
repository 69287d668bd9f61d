//! Manifests, tags and referrers. A manifest is stored as a revision of its repository (its
//! media type, then its exact bytes, in one object), then indexed under its subject, then
//! tagged; deletion runs in the opposite order, so no tag or referrer ever names a missing
//! manifest.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{ObjectRegistry, TagList};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::{self, Descriptor, ManifestKind};
use crate::names::{Reference, RepoName, Tag};
use crate::storage::{paginate, ManifestInfo, ManifestStore, Page, PutManifest, ReferrerStore};

/// A stored manifest revision: `<media type>\n<exact manifest bytes>` in one object, so a push
/// is one write and a pull by digest one read. Media types are always one of
/// [`manifest::MANIFEST_TYPES`], so they never contain a newline.
struct Revision {
    media_type: String,
    bytes: Bytes,
}

impl Revision {
    fn encode(media_type: &str, bytes: &Bytes) -> PutPayload {
        PutPayload::from_iter([Bytes::from(format!("{media_type}\n")), bytes.clone()])
    }

    fn decode(path: &object_store::path::Path, raw: Bytes) -> Result<Revision> {
        let corrupt = |reason: &str| Error::Corrupt {
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        let newline = raw
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no media type line"))?;
        let media_type = std::str::from_utf8(&raw[..newline])
            .map_err(|_| corrupt("media type is not UTF-8"))?
            .to_owned();
        Ok(Revision {
            media_type,
            bytes: raw.slice(newline + 1..),
        })
    }

    fn info(&self, digest: &Digest) -> ManifestInfo {
        ManifestInfo {
            digest: digest.clone(),
            media_type: self.media_type.clone(),
            size: self.bytes.len() as u64,
        }
    }
}

/// A revision object's media type and manifest bytes (for `fsck`).
pub(super) fn decode_revision(
    path: &object_store::path::Path,
    raw: Bytes,
) -> Result<(String, Bytes)> {
    Revision::decode(path, raw).map(|r| (r.media_type, r.bytes))
}

/// Content of a tag.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagTarget {
    digest: Digest,
    media_type: String,
    size: u64,
}

impl ObjectRegistry {
    /// A manifest revision as stored now (for writes and deletions).
    async fn revision(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Revision>> {
        let path = layout::revision_link(repo, digest);
        match self.get_small(&path).await? {
            Some(raw) => Revision::decode(&path, raw).map(Some),
            None => Ok(None),
        }
    }

    /// A manifest revision for a pull: possibly from the metadata cache.
    async fn revision_cached(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Arc<Revision>>> {
        let key = layout::revision_link_text(repo, digest);
        self.get_cached(key, |path, raw| Revision::decode(path, raw).map(Arc::new))
            .await
    }

    /// What a reference names, for a pull (possibly from the metadata cache).
    async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestInfo> {
        let unknown = || Error::ManifestUnknown(reference.to_string());
        match reference {
            Reference::Tag(t) => {
                let target = self
                    .get_cached(layout::tag_text(repo, t), |path, raw| {
                        super::parse_json::<TagTarget>(path, &raw).map(Arc::new)
                    })
                    .await?
                    .ok_or_else(unknown)?;
                Ok(ManifestInfo {
                    digest: target.digest.clone(),
                    media_type: target.media_type.clone(),
                    size: target.size,
                })
            }
            Reference::Digest(d) => Ok(self
                .revision_cached(repo, d)
                .await?
                .ok_or_else(unknown)?
                .info(d)),
        }
    }

    /// Checks that every blob or child manifest the manifest needs is in the repository: an
    /// image's config and layers as blobs, an index's children as manifests (a blob that is not
    /// a manifest cannot be pulled as one, so it does not count).
    async fn check_references(
        &self,
        repo: &RepoName,
        parsed: &manifest::ParsedManifest,
    ) -> Result<()> {
        let references: Vec<&Descriptor> = parsed.required_references().collect();
        let paths: Vec<_> = references
            .iter()
            .map(|d| match parsed.kind {
                ManifestKind::Image => layout::layer_link(repo, &d.digest),
                ManifestKind::Index => layout::revision_link(repo, &d.digest),
            })
            .collect();
        let found = self.get_small_many(&paths).await?;
        for ((d, path), raw) in references.iter().zip(&paths).zip(found) {
            let Some(raw) = raw else {
                return Err(Error::ManifestBlobUnknown(d.digest.clone()));
            };
            if parsed.kind == ManifestKind::Image {
                super::blobs::link_size(path, raw)?;
            }
        }
        Ok(())
    }

    /// Stores a verified manifest: its revision, its referrer entry, its tags.
    async fn commit_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        parsed: &manifest::ParsedManifest,
        bytes: &Bytes,
        digest: Digest,
    ) -> Result<PutManifest> {
        self.ensure_repo(repo).await?;

        let size = bytes.len() as u64;
        let target = TagTarget {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            size,
        };
        let target = Bytes::from(serde_json::to_vec(&target).expect("plain data serializes"));
        let named = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        // The tags are readied while the revision is written (on a filesystem: written and
        // fsynced beside their files, so those fsyncs overlap the revision's) and put in place
        // only once the revision and its referrer entry are stored.
        let stage_tags =
            futures::future::try_join_all(named.into_iter().chain(tags).map(|t| {
                self.prepare_small(layout::tag(repo, t), PutPayload::from(target.clone()))
            }));
        let write_revision = async {
            self.put_small(
                &layout::revision_link(repo, &digest),
                Revision::encode(&parsed.media_type, bytes),
            )
            .await?;
            if let Some(subject) = &parsed.subject {
                let descriptor = Descriptor {
                    media_type: parsed.media_type.clone(),
                    digest: digest.clone(),
                    size,
                    artifact_type: parsed.artifact_type.clone(),
                    annotations: parsed.annotations.clone(),
                    urls: None,
                    platform: None,
                };
                self.put_json(
                    &layout::referrer(repo, &subject.digest, &digest),
                    &descriptor,
                )
                .await?;
            }
            Ok(())
        };
        let (staged, ()) = futures::try_join!(stage_tags, write_revision)?;
        // A new generation for a moved tag too: cached lists carry when each tag was set.
        let tagged = !staged.is_empty();
        for tag in staged {
            self.publish_small(tag).await?;
        }
        if tagged {
            self.tags_changed(repo).await?;
        }
        Ok(PutManifest {
            digest,
            subject: parsed.subject.as_ref().map(|s| s.digest.clone()),
        })
    }

    /// Descriptors listed in the tag-schema index `<alg>-<first 64 chars of hex>`, if any.
    async fn tag_schema_referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
        #[derive(Deserialize)]
        struct Index {
            manifests: Vec<Descriptor>,
        }
        let hex = subject.hex();
        let name = format!("{}-{}", subject.algorithm(), &hex[..hex.len().min(64)]);
        let tag: Tag = name.parse()?;
        let Some(target) = self.get_json::<TagTarget>(&layout::tag(repo, &tag)).await? else {
            return Ok(Vec::new());
        };
        if target.media_type != manifest::OCI_INDEX {
            return Ok(Vec::new());
        }
        let Some(Revision { bytes, .. }) = self.revision(repo, &target.digest).await? else {
            return Ok(Vec::new());
        };
        // A client-maintained index that does not parse lists nothing; it is not our error.
        Ok(serde_json::from_slice::<Index>(&bytes)
            .map(|i| i.manifests)
            .unwrap_or_default())
    }

    /// Records that the set of tags of `repo` changed; called after the change is stored, so a
    /// reader that sees the new generation also sees the change.
    pub(super) async fn tags_changed(&self, repo: &RepoName) -> Result<()> {
        let generation = uuid::Uuid::new_v4().simple().to_string();
        self.put_generation(&layout::tags_generation(repo), generation.into())
            .await
    }

    /// The sorted tags of `repo`, with when each was last set. The generation is read before
    /// listing, so a list cached under it can only be newer than the generation, never older.
    async fn all_tags(&self, repo: &RepoName) -> Result<Arc<TagList>> {
        let generation = self
            .get_small_from(self.volatile(), &layout::tags_generation(repo))
            .await?;
        if let Some(g) = &generation {
            let cache = self.tag_lists.lock().expect("not poisoned");
            if let Some((cached, list)) = cache.get(repo) {
                if cached == g {
                    return Ok(list.clone());
                }
            }
        }
        let listing = self
            .store
            .list_with_delimiter(Some(&layout::tags_dir(repo)))
            .await?;
        let mut found: Vec<(Tag, SystemTime)> = (listing.objects.iter())
            .filter_map(|m| Some((m.location.filename()?.parse().ok()?, m.last_modified.into())))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let (tags, times) = found.into_iter().unzip();
        let tags = Arc::new(TagList { tags, times });
        if let Some(g) = generation {
            let mut cache = self.tag_lists.lock().expect("not poisoned");
            if cache.len() >= TAG_LIST_CACHE_REPOS {
                cache.clear();
            }
            cache.insert(repo.clone(), (g, tags.clone()));
        }
        Ok(tags)
    }
}

/// A pushed manifest parsed, and its digest, which must be the one `reference` names, if it
/// names one.
fn parse_for_put(
    reference: &Reference,
    content_type: Option<&str>,
    bytes: &Bytes,
) -> Result<(manifest::ParsedManifest, Digest)> {
    let parsed = manifest::parse(content_type, bytes)?;
    let algorithm = match reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, bytes);
    if let Reference::Digest(d) = reference {
        if d != &digest {
            return Err(Error::DigestMismatch {
                expected: d.clone(),
                actual: digest,
            });
        }
    }
    Ok((parsed, digest))
}

/// How many repositories' tag lists are cached at most.
const TAG_LIST_CACHE_REPOS: usize = 1024;

#[async_trait]
impl ManifestStore for ObjectRegistry {
    async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[Tag],
    ) -> Result<PutManifest> {
        let (parsed, digest) = parse_for_put(reference, content_type, &bytes)?;
        // Checked and committed safely against a concurrent garbage collection.
        let needs: Vec<Digest> = parsed
            .required_references()
            .map(|d| d.digest.clone())
            .collect();
        let verify = || self.check_references(repo, &parsed);
        let commit = self.commit_manifest(repo, reference, tags, &parsed, &bytes, digest);
        match self.depend_on(&needs, verify, commit).await {
            Err(Error::Doomed(d)) => Err(Error::ManifestBlobUnknown(d)),
            other => other,
        }
    }

    async fn manifest_cache(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[Tag],
    ) -> Result<PutManifest> {
        let (parsed, digest) = parse_for_put(reference, content_type, &bytes)?;
        // The marker (a fill is a use), before the manifest: fsck never finds a cache's
        // manifest without it.
        self.cache_used(repo).await?;
        self.commit_manifest(repo, reference, tags, &parsed, &bytes, digest)
            .await
    }

    async fn cache_used(&self, repo: &RepoName) -> Result<()> {
        self.store
            .put(&layout::mirror_marker(repo), PutPayload::from_static(b""))
            .await?;
        Ok(())
    }

    async fn manifest_info(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestInfo> {
        self.resolve(repo, reference).await
    }

    async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(ManifestInfo, Bytes)> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(_) => self.resolve(repo, reference).await?.digest,
        };
        let rev = self
            .revision_cached(repo, &digest)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
        Ok((rev.info(&digest), rev.bytes.clone()))
    }

    async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        match reference {
            Reference::Tag(t) => {
                let path = layout::tag(repo, t);
                if !self.exists(&path).await? {
                    return Err(Error::ManifestUnknown(t.to_string()));
                }
                self.delete_quiet(&path).await?;
                self.tags_changed(repo).await
            }
            Reference::Digest(d) => {
                let Some(rev) = self.revision(repo, d).await? else {
                    return Err(Error::ManifestUnknown(d.to_string()));
                };
                let mut untagged = false;
                for tag in self.all_tags(repo).await?.tags.iter() {
                    let path = layout::tag(repo, tag);
                    if let Some(t) = self.get_json::<TagTarget>(&path).await? {
                        if &t.digest == d {
                            self.delete_quiet(&path).await?;
                            untagged = true;
                        }
                    }
                }
                if untagged {
                    self.tags_changed(repo).await?;
                }
                if let Ok(parsed) = manifest::parse(Some(&rev.media_type), &rev.bytes) {
                    if let Some(subject) = parsed.subject {
                        self.delete_quiet(&layout::referrer(repo, &subject.digest, d))
                            .await?;
                    }
                }
                self.delete_quiet(&layout::revision_link(repo, d)).await
            }
        }
    }

    async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<Page<Tag>> {
        if !self.repo_exists(repo).await? {
            return Err(Error::NameUnknown(repo.to_string()));
        }
        Ok(paginate(
            &self.all_tags(repo).await?.tags,
            last,
            n,
            Tag::as_str,
        ))
    }

    async fn tag_times(&self, repo: &RepoName) -> Result<Vec<(Tag, Option<SystemTime>)>> {
        if !self.repo_exists(repo).await? {
            return Err(Error::NameUnknown(repo.to_string()));
        }
        let list = self.all_tags(repo).await?;
        Ok((list.tags.iter().cloned())
            .zip(list.times.iter().map(|t| Some(*t)))
            .collect())
    }
}

#[async_trait]
impl ReferrerStore for ObjectRegistry {
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&layout::referrers_dir(repo, subject)))
            .await?;
        let mut found: Vec<Descriptor> = futures::stream::iter(listing.objects)
            .map(|m| async move { self.get_json::<Descriptor>(&m.location).await })
            .buffer_unordered(16)
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect()
            .await?;
        // Referrers that clients recorded under the tag schema (`<alg>-<ref>`) before the API
        // existed are listed too.
        for d in self.tag_schema_referrers(repo, subject).await? {
            if !found.iter().any(|f| f.digest == d.digest) {
                found.push(d);
            }
        }
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::open::{open, StorageLocation};
    use crate::testsuite::{data, image_manifest, push_blob};

    /// On a filesystem a new tag rewrites `tags_generation` in place (no inode freed per tag,
    /// see `put_generation`), and the tag list, cached under the old generation, still sees it.
    #[tokio::test]
    async fn a_new_tag_rewrites_the_generation_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&StorageLocation::Filesystem(dir.path().into()))
            .unwrap()
            .registry();
        let r: RepoName = "in/place".parse().unwrap();
        let config = data(100, 7);
        let d = push_blob(&s, &r, &config).await;
        let put = |tag: &str, salt: usize| {
            let bytes = image_manifest(&d, 100, &[(d.clone(), 100 + salt)], None);
            let reference = Reference::Tag(tag.parse().unwrap());
            let s = s.clone();
            let r = r.clone();
            async move {
                s.manifest_put(
                    &r,
                    &reference,
                    Some(manifest::OCI_MANIFEST),
                    bytes.into(),
                    &[],
                )
                .await
                .unwrap()
            }
        };
        let names = |page: crate::storage::Page<Tag>| {
            page.items.iter().map(Tag::to_string).collect::<Vec<_>>()
        };
        put("a", 0).await;
        let file = dir.path().join(layout::tags_generation(&r).as_ref());
        let (inode, first) = (
            file.metadata().unwrap().ino(),
            std::fs::read(&file).unwrap(),
        );
        assert_eq!(names(s.tags(&r, None, None).await.unwrap()), ["a"]);
        put("b", 1).await;
        assert_eq!(file.metadata().unwrap().ino(), inode, "rewritten in place");
        let second = std::fs::read(&file).unwrap();
        assert_ne!(second, first);
        assert_eq!(second.len(), first.len());
        assert_eq!(names(s.tags(&r, None, None).await.unwrap()), ["a", "b"]);
        // A generation of another length (written by anything else) is replaced whole.
        std::fs::write(&file, b"short").unwrap();
        put("c", 2).await;
        assert_eq!(std::fs::read(&file).unwrap().len(), first.len());
        assert_eq!(
            names(s.tags(&r, None, None).await.unwrap()),
            ["a", "b", "c"]
        );
    }
}
