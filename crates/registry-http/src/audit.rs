//! The audit trail: one line per state-changing request (push, tag, mount, delete), whatever
//! its outcome, through `tracing` with the target `audit`, so the binary can send it to a
//! file of its own (or stderr), as JSON if asked, apart from the request log. Each line
//! says who (the identity, `anonymous` without a guard's), from where (the client address,
//! after trusted proxies), what (action, repository, digest, tag) and the result (status).
//! Pushes and deletes the guard refuses, logins that fail (`registry_auth`), garbage
//! collections and configuration reloads write lines to the same target.

use axum::http::Method;
use axum::response::Response;
use registry_core::Reference;

use crate::{ApiError, Endpoint, Req};

/// The target of audit lines.
pub const TARGET: &str = registry_auth::AUDIT_TARGET;

/// A state-changing request being answered.
pub(crate) struct Audited {
    action: &'static str,
    repository: String,
    digest: Option<String>,
    tag: Option<String>,
    /// Blob mounts that fall back to an upload session (202) changed nothing.
    mount: bool,
}

impl Audited {
    /// What `req` on `endpoint` changes, if it changes anything.
    pub(crate) fn of(req: &Req, endpoint: &Endpoint) -> Option<Audited> {
        let audited = |action, repo: &registry_core::RepoName, reference: Option<&Reference>| {
            let (digest, tag) = match reference {
                Some(Reference::Digest(d)) => (Some(d.to_string()), None),
                Some(Reference::Tag(t)) => (None, Some(t.to_string())),
                None => (None, None),
            };
            Some(Audited {
                action,
                repository: repo.to_string(),
                digest,
                tag,
                mount: false,
            })
        };
        match (&req.method, endpoint) {
            (&Method::PUT, Endpoint::Manifest(name, r @ Reference::Tag(_))) => {
                audited("tag", name, Some(r))
            }
            (&Method::PUT, Endpoint::Manifest(name, r)) => audited("push", name, Some(r)),
            (&Method::PUT, Endpoint::Upload(name, _)) => audited("push", name, None),
            (&Method::POST, Endpoint::Uploads(name)) => {
                if req.query("mount").is_some() {
                    let mut a = audited("mount", name, None)?;
                    a.mount = true;
                    Some(a)
                } else if req.query("digest").is_some() {
                    audited("push", name, None)
                } else {
                    None
                }
            }
            (&Method::DELETE, Endpoint::Manifest(name, r)) => audited("delete", name, Some(r)),
            (&Method::DELETE, Endpoint::Blob(name, d)) => {
                audited("delete", name, Some(&Reference::Digest(d.clone())))
            }
            _ => None,
        }
    }

    /// Writes the line for the answer `result`.
    pub(crate) fn finish(self, req: &Req, result: &Result<Response, ApiError>) {
        let (status, error) = match result {
            Ok(r) => (r.status().as_u16(), None),
            Err(e) => {
                let (code, status) = e.code.parts();
                (status.as_u16(), Some(code))
            }
        };
        if self.mount && status == 202 {
            return; // not mounted: a plain upload session began
        }
        let digest = self.digest.or_else(|| {
            let answered = result
                .as_ref()
                .ok()?
                .headers()
                .get("docker-content-digest")?;
            answered.to_str().ok().map(str::to_owned)
        });
        let who = req
            .caller
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |c| c.identity.to_string());
        let client = req.client().map(|ip| ip.to_string()).unwrap_or_default();
        let host = req.header("host").unwrap_or_default();
        let result = if (200..300).contains(&status) {
            "ok"
        } else {
            "failed"
        };
        tracing::info!(
            target: TARGET,
            action = self.action,
            result,
            status,
            error,
            who,
            client,
            host,
            repository = %self.repository,
            digest,
            tag = self.tag,
            "{} {}",
            self.action,
            self.repository,
        );
    }
}

/// Writes the line of a push or delete that the guard refused to `identity`.
pub(crate) fn refused(
    action: registry_auth::Action,
    repository: Option<&str>,
    identity: &registry_auth::Identity,
    client: std::net::IpAddr,
    why: &registry_auth::Refusal,
) {
    let action = match action {
        registry_auth::Action::Delete => "delete",
        _ => "push",
    };
    let error = match why {
        registry_auth::Refusal::Denied(_) => "DENIED",
        registry_auth::Refusal::Unauthenticated { .. } => "UNAUTHORIZED",
        registry_auth::Refusal::TooManyAttempts { .. } => "TOOMANYREQUESTS",
    };
    tracing::info!(
        target: TARGET,
        action,
        result = "denied",
        error,
        who = %identity,
        %client,
        repository,
        "{action} refused"
    );
}
