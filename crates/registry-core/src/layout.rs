//! The storage key layout, drawn once. Every key the registry reads or writes is built here.
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>/data               content-addressed bytes of layers and configs, or
//!                                                  a pointer to where they are (see store::placed)
//! placed/<id>                                      bytes an upload session streamed into a
//!                                                  multipart upload; a blob's pointer names them
//! repositories/<name>/_layers/<alg>/<hex>          link: the blob is in the repository; holds its size
//! repositories/<name>/_manifests/revisions/<alg>/<hex>  the manifest, in the repository:
//!                                                  "<mediaType>\n" then its exact bytes
//! repositories/<name>/_manifests/tags/<tag>        holds {"digest","mediaType","size"}
//! repositories/<name>/_manifests/tags_generation   random value, rewritten when tags are set or
//!                                                  removed (validates cached tag lists and times)
//! repositories/<name>/_mirror                     marker: a pull-through cache, whose manifests
//!                                                  need not have what they reference (it is
//!                                                  fetched when pulled)
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>
//!                                                  a referrer of subject <alg>:<hex>; holds its descriptor
//! catalog/<name>/_repository                       marker: the repository exists (for the catalog)
//! catalog_generation                               random value, rewritten when a repository is
//!                                                  created (validates cached catalogs)
//! uploads/<id>/state                               upload session: repository, size, parts, hash state
//! uploads/<id>/part-<offset, 20 digits>-<nonce>    bytes of one chunk, starting at <offset>; the
//!                                                  nonce keeps racing writers of one offset apart
//! lost+found/<unix time>/<key>                     what `fsck --repair` moved aside
//! gc/lease                                         a running garbage collection (see store::gc)
//! gc/pins/<id>                                     digests a writer is about to depend on
//! gc/doomed/<alg>/<hex>                            a digest a collection is deleting
//! auth/tokens/<name>                               a scoped token: its name, the SHA-256 of its
//!                                                  secret, scopes, expiry, owner (never the secret)
//! events/<endpoint>/queue/<ms>-<node>-<seq>-<n>.json  <n> events not yet delivered to a notification
//!                                                  endpoint, a batch per object, oldest first
//! events/<endpoint>/lease                          the node delivering to the endpoint
//! ```
//!
//! Repository path components never start with `_` (the name grammar forbids it), so the `_…`
//! directories cannot collide with nested repository names.
//!
//! Keys under `uploads/`, `tags_generation` and `catalog_generation` may be written through the registry's scratch view of the storage (see
//! `ObjectRegistry::with_scratch`); the keys are the same, only their durability differs.

use object_store::path::Path;

use crate::digest::Digest;
use crate::names::{RepoName, Tag};

/// The text of the key made of `parts`.
fn text(parts: &[&str]) -> String {
    parts.join("/")
}

/// The key whose text is `text` (from one of the `…_text` functions here). Components come
/// from validated types (names, tags, digests, session ids), which hold none of the
/// characters `Path::from` escapes, so checking the text is enough and the key's text is
/// `text`; `Path::from` rebuilds it part by part (a manifest GET built two keys: that was 3 %
/// of its CPU). Should a component ever need escaping, `Path::from` does it.
pub(crate) fn path(text: String) -> Path {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/');
    match text.bytes().all(plain).then(|| Path::parse(&text)) {
        Some(Ok(path)) => path,
        _ => Path::from(text),
    }
}

fn join(parts: &[&str]) -> Path {
    path(text(parts))
}

/// The root of every blob's bytes.
pub fn blobs_root() -> Path {
    Path::from("blobs")
}

/// Global bytes of a blob or manifest.
pub fn blob(d: &Digest) -> Path {
    join(&[
        "blobs",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex(),
        "data",
    ])
}

/// A blob's link in a repository.
pub fn layer_link(repo: &RepoName, d: &Digest) -> Path {
    path(layer_link_text(repo, d))
}

/// The text of [`layer_link`] (for lookups in the metadata cache, which need no [`Path`]).
pub(crate) fn layer_link_text(repo: &RepoName, d: &Digest) -> String {
    text(&[
        "repositories",
        repo.as_str(),
        "_layers",
        d.algorithm().as_str(),
        d.hex(),
    ])
}

/// The directory of a repository's blob links.
pub fn layers_dir(repo: &RepoName) -> Path {
    join(&["repositories", repo.as_str(), "_layers"])
}

/// The directory of a repository's manifest revisions.
pub fn revisions_dir(repo: &RepoName) -> Path {
    join(&["repositories", repo.as_str(), "_manifests", "revisions"])
}

/// Where `fsck --repair` keeps what it moves aside: `lost+found/<unix time>/<original key>`.
pub fn lost_and_found(unix_time: u64, original: &Path) -> Path {
    Path::from(format!("lost+found/{unix_time}/{original}"))
}

/// A manifest revision's link in a repository.
pub fn revision_link(repo: &RepoName, d: &Digest) -> Path {
    path(revision_link_text(repo, d))
}

/// The text of [`revision_link`].
pub(crate) fn revision_link_text(repo: &RepoName, d: &Digest) -> String {
    text(&[
        "repositories",
        repo.as_str(),
        "_manifests",
        "revisions",
        d.algorithm().as_str(),
        d.hex(),
    ])
}

/// The marker of a repository that is a pull-through cache.
pub fn mirror_marker(repo: &RepoName) -> Path {
    join(&["repositories", repo.as_str(), "_mirror"])
}

/// The directory holding a repository's tags.
pub fn tags_dir(repo: &RepoName) -> Path {
    join(&["repositories", repo.as_str(), "_manifests", "tags"])
}

/// One tag.
pub fn tag(repo: &RepoName, t: &Tag) -> Path {
    path(tag_text(repo, t))
}

/// The text of [`tag`].
pub(crate) fn tag_text(repo: &RepoName, t: &Tag) -> String {
    text(&[
        "repositories",
        repo.as_str(),
        "_manifests",
        "tags",
        t.as_str(),
    ])
}

/// A value rewritten whenever a tag of `repo` is set or removed, so a cached tag list (with
/// when each tag was set) can be validated with one small read.
pub fn tags_generation(repo: &RepoName) -> Path {
    join(&[
        "repositories",
        repo.as_str(),
        "_manifests",
        "tags_generation",
    ])
}

/// The directory of referrers of `subject`.
pub fn referrers_dir(repo: &RepoName, subject: &Digest) -> Path {
    join(&[
        "repositories",
        repo.as_str(),
        "_referrers",
        subject.algorithm().as_str(),
        subject.hex(),
    ])
}

/// One referrer entry.
pub fn referrer(repo: &RepoName, subject: &Digest, referrer: &Digest) -> Path {
    referrers_dir(repo, subject).join(format!("{}-{}", referrer.algorithm(), referrer.hex()))
}

/// The root of the catalog markers.
pub fn catalog_root() -> Path {
    Path::from("catalog")
}

/// File name of a catalog marker.
pub const CATALOG_MARKER: &str = "_repository";

/// A repository's catalog marker.
pub fn catalog_marker(repo: &RepoName) -> Path {
    join(&["catalog", repo.as_str(), CATALOG_MARKER])
}

/// Rewritten whenever a repository is created (outside `catalog/`, so listings never see it).
pub fn catalog_generation() -> Path {
    Path::from("catalog_generation")
}

/// The root of bytes placed by upload sessions' multipart uploads.
pub fn placed_root() -> Path {
    Path::from("placed")
}

/// Where the multipart upload of session `id` puts its bytes.
pub fn placed(id: &str) -> Path {
    placed_root().join(id)
}

/// The mark saying that a pointer at blob `digest` names the placed bytes of session `id`
/// (written after the pointer; see `store::placed`). Beside the bytes, so one listing finds
/// both.
pub fn placed_mark(id: &str, digest: &Digest) -> Path {
    placed_root().join(format!("{id}.{}-{}", digest.algorithm(), digest.hex()))
}

/// What a key under [`placed_root`] holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed<'a> {
    /// The bytes placed by session `id`.
    Bytes(&'a str),
    /// The mark that blob `digest` points to session `id`'s bytes.
    Mark(&'a str, Digest),
}

/// What `key`, under [`placed_root`], holds; `None` for a key this layout never writes.
pub fn parse_placed(key: &Path) -> Option<Placed<'_>> {
    let name = key.filename()?;
    match name.split_once('.') {
        None => Some(Placed::Bytes(name)),
        Some((id, mark)) => {
            let (alg, hex) = mark.split_once('-')?;
            let digest = format!("{alg}:{hex}").parse().ok()?;
            Some(Placed::Mark(id, digest))
        }
    }
}

/// The root of upload sessions.
pub fn uploads_root() -> Path {
    Path::from("uploads")
}

/// The directory of one upload session.
pub fn upload_dir(id: &str) -> Path {
    uploads_root().join(id)
}

/// The state document of one upload session.
pub fn upload_state(id: &str) -> Path {
    upload_dir(id).join("state")
}

/// One chunk of an upload session, written by one request (`nonce` tells requests apart).
pub fn upload_part(id: &str, offset: u64, nonce: &str) -> Path {
    upload_dir(id).join(format!("part-{offset:020}-{nonce}"))
}

/// What the last garbage collection found (see `store::reports`).
pub fn gc_report() -> Path {
    Path::from("reports/gc.json")
}

/// What the last fsck found.
pub fn fsck_report() -> Path {
    Path::from("reports/fsck.json")
}

/// The queue of events for the notification endpoint `endpoint` (a checked name).
pub fn events_queue(endpoint: &str) -> Path {
    path(format!("events/{endpoint}/queue"))
}

/// Which node delivers the events of `endpoint`.
pub fn events_lease(endpoint: &str) -> Path {
    path(format!("events/{endpoint}/lease"))
}

/// The lease of a running garbage collection.
pub fn gc_lease() -> Path {
    Path::from("gc/lease")
}

/// The directory of writers' pins.
pub fn gc_pins_root() -> Path {
    Path::from("gc/pins")
}

/// One writer's pin.
pub fn gc_pin(id: &str) -> Path {
    gc_pins_root().join(id)
}

/// The directory of doomed marks.
pub fn gc_doomed_root() -> Path {
    Path::from("gc/doomed")
}

/// The mark of a digest a collection is deleting.
pub fn gc_doomed(d: &Digest) -> Path {
    join(&["gc", "doomed", d.algorithm().as_str(), d.hex()])
}

/// The root of stored scoped tokens (see `registry_auth::token::records`).
pub fn auth_tokens_root() -> Path {
    Path::from("auth/tokens")
}

/// One stored scoped token; `name` is a token name (no `/`, not starting with `.`).
pub fn auth_token(name: &str) -> Path {
    auth_tokens_root().join(name)
}

/// The root of the certificate state shared by the nodes of an instance whose certificates come
/// from ACME (see `registry_acme::StateStore`): account, certificate and key, challenges.
pub fn acme_root() -> Path {
    Path::from("acme")
}

/// A key that is never written; reading it proves the backend answers.
pub fn health_probe() -> Path {
    Path::from("_health")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let d: Digest = format!("sha256:ab{}", "0".repeat(62)).parse().unwrap();
        let r: RepoName = "a/b".parse().unwrap();
        assert_eq!(
            blob(&d).as_ref(),
            format!("blobs/sha256/ab/ab{}/data", "0".repeat(62))
        );
        assert_eq!(
            layer_link(&r, &d).as_ref(),
            format!("repositories/a/b/_layers/sha256/ab{}", "0".repeat(62))
        );
        assert_eq!(
            upload_part("x", 5, "n").as_ref(),
            "uploads/x/part-00000000000000000005-n"
        );
        assert_eq!(catalog_marker(&r).as_ref(), "catalog/a/b/_repository");
        let mark = placed_mark("s1", &d);
        assert_eq!(
            mark.as_ref(),
            format!("placed/s1.sha256-ab{}", "0".repeat(62))
        );
        assert_eq!(parse_placed(&mark), Some(Placed::Mark("s1", d.clone())));
        assert_eq!(parse_placed(&placed("s1")), Some(Placed::Bytes("s1")));
        assert_eq!(parse_placed(&Path::from("placed/s1.sha256-zz")), None);
        let t: Tag = "v1.0".parse().unwrap();
        assert_eq!(
            tag(&r, &t).as_ref(),
            "repositories/a/b/_manifests/tags/v1.0"
        );
    }

    #[test]
    fn keys_are_what_path_from_would_build() {
        let d: Digest = format!("sha256:{}", "f".repeat(64)).parse().unwrap();
        let r: RepoName = "a-b/c.d/e__f".parse().unwrap();
        for t in ["_x", "A.b-c_D", &"z".repeat(128)] {
            let t: Tag = t.parse().unwrap();
            let key = tag(&r, &t);
            assert_eq!(key, Path::from(key.as_ref().to_owned()));
            assert_eq!(key.as_ref(), tag_text(&r, &t));
            assert_eq!(key, tags_dir(&r).join(t.as_str()));
        }
        let key = revision_link(&r, &d);
        assert_eq!(key, Path::from(key.as_ref().to_owned()));
        assert_eq!(key.as_ref(), revision_link_text(&r, &d));
        assert_eq!(layer_link(&r, &d).as_ref(), layer_link_text(&r, &d));
        assert_eq!(
            join(&["a", "b%c"]).as_ref(),
            "a/b%25c",
            "escaped when it must be"
        );
    }
}
