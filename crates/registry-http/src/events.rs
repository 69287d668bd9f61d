//! Event notifications from the handlers: where a write commits (or a read is answered), the
//! handler calls [`emit`], which costs one branch when no endpoint hears of the action on
//! that repository; the notifier (`registry_events`) queues and delivers.

use registry_core::{Digest, RepoName};
use registry_events::{Action, Actor, Event, RequestRecord, Target};

use crate::{RegistryState, Req};

/// Blobs' media type in events, as Distribution sends it.
pub(crate) const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// What an event is about, before the request's details are added.
pub(crate) struct About<'a> {
    pub repo: &'a RepoName,
    pub media_type: Option<&'a str>,
    pub size: Option<u64>,
    pub digest: Option<&'a Digest>,
    pub tag: Option<&'a str>,
    pub from: Option<&'a RepoName>,
    /// `manifests` or `blobs`: the content's URL is given when set (and a digest is).
    pub kind: Option<&'static str>,
}

impl<'a> About<'a> {
    /// A blob of `repo`.
    pub(crate) fn blob(repo: &'a RepoName, digest: &'a Digest, size: Option<u64>) -> Self {
        About {
            repo,
            media_type: Some(BLOB_MEDIA_TYPE),
            size,
            digest: Some(digest),
            tag: None,
            from: None,
            kind: Some("blobs"),
        }
    }

    /// A manifest of `repo`.
    pub(crate) fn manifest(
        repo: &'a RepoName,
        digest: &'a Digest,
        media_type: &'a str,
        size: u64,
        tag: Option<&'a str>,
    ) -> Self {
        About {
            repo,
            media_type: Some(media_type),
            size: Some(size),
            digest: Some(digest),
            tag,
            from: None,
            kind: Some("manifests"),
        }
    }

    /// Only a name in `repo`: a digest or a tag that was deleted.
    pub(crate) fn deleted(
        repo: &'a RepoName,
        digest: Option<&'a Digest>,
        tag: Option<&'a str>,
    ) -> Self {
        About {
            repo,
            media_type: None,
            size: None,
            digest,
            tag,
            from: None,
            kind: None,
        }
    }
}

/// Whether some endpoint hears of `action` on `repo`.
pub(crate) fn wanted(s: &RegistryState, action: Action, repo: &RepoName) -> bool {
    s.events
        .as_ref()
        .is_some_and(|n| n.wants(action, repo.as_str()))
}

/// Sends an event of `action` on `about`, made by `req`, to the endpoints that hear of it.
pub(crate) fn emit(s: &RegistryState, req: &Req, action: Action, about: About<'_>) {
    let Some(notifier) = s.events.as_ref() else {
        return;
    };
    if !notifier.wants(action, about.repo.as_str()) {
        return;
    }
    let host = req
        .header("host")
        .map(str::to_owned)
        .or_else(|| req.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let connection = req.connection.as_ref();
    let scheme = if connection.is_some_and(|c| c.tls) {
        "https"
    } else {
        "http"
    };
    // With the port when the client is the connection's peer (no proxy in between).
    let addr = match (req.client(), connection) {
        (Some(ip), Some(conn)) if ip == conn.peer.ip() => conn.peer.to_string(),
        (ip, _) => ip.map(|ip| ip.to_string()).unwrap_or_default(),
    };
    let url = match (about.kind, about.digest) {
        (Some(kind), Some(d)) if !host.is_empty() => {
            Some(format!("{scheme}://{host}/v2/{}/{kind}/{d}", about.repo))
        }
        _ => None,
    };
    let target = Target {
        media_type: about.media_type.map(str::to_owned),
        size: about.size,
        digest: about.digest.map(ToString::to_string),
        length: about.size,
        repository: about.repo.to_string(),
        from_repository: about.from.map(ToString::to_string),
        url,
        tag: about.tag.map(str::to_owned),
    };
    let request = RequestRecord {
        id: registry_events::new_id(),
        addr,
        host,
        method: req.method.to_string(),
        useragent: req.header("user-agent").unwrap_or_default().to_owned(),
    };
    let actor = Actor {
        name: req
            .caller
            .as_ref()
            .map(|c| c.identity.subject())
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
    };
    notifier.emit(Event::new(action, target, request, actor));
}
