//! Parsing of `/v2/…` paths into an [`Endpoint`]. Repository names contain slashes, so the path is
//! matched from its end; the raw (still percent-encoded) path is used, so `%2F` and friends never
//! turn into separators. Every component is validated into its core type here, once.

use axum::http::Method;
use registry_core::{Digest, Reference, RepoName};

use crate::error::{ApiError, ErrorCode};

/// What a request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/manifests/<text>` where the text is neither a tag nor a digest: nothing is
    /// stored under it, so reads and deletes find nothing (404), and a push is refused with
    /// the reason the text is invalid (400).
    InvalidReference(RepoName, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    Uploads(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

/// The class of access a request needs, for authorization.
pub use registry_auth::Action as Access;

impl Endpoint {
    /// Parses a raw request path.
    pub fn parse(path: &str) -> Result<Endpoint, ApiError> {
        let not_found = || ApiError::new(ErrorCode::NotFound, "no such endpoint");
        let rest = path.strip_prefix("/v2").ok_or_else(not_found)?;
        if rest.is_empty() || rest == "/" {
            return Ok(Endpoint::Base);
        }
        let rest = rest.strip_prefix('/').ok_or_else(not_found)?;
        if rest == "_catalog" {
            return Ok(Endpoint::Catalog);
        }
        // The last three segments (`""` where there are fewer); the name is what precedes the
        // last `count` of them.
        let mut tail = rest.rsplitn(4, '/');
        let last: [&str; 3] = std::array::from_fn(|_| tail.next().unwrap_or(""));
        let segments = rest.split('/').count();
        let name = |count: usize| -> Result<RepoName, ApiError> {
            if segments <= count {
                return Err(not_found());
            }
            let suffix: usize = last[..count].iter().map(|s| s.len() + 1).sum();
            Ok(rest[..rest.len() - suffix].parse()?)
        };
        let at = |i: usize| last[i - 1];
        match (at(3), at(2), at(1)) {
            (_, "blobs", "uploads") | ("blobs", "uploads", "") => {
                Ok(Endpoint::Uploads(name(if at(1).is_empty() {
                    3
                } else {
                    2
                })?))
            }
            ("blobs", "uploads", id) => Ok(Endpoint::Upload(name(3)?, id.to_owned())),
            (_, "tags", "list") => Ok(Endpoint::Tags(name(2)?)),
            (_, "manifests", r) if !r.is_empty() => {
                let name = name(2)?;
                Ok(match r.parse() {
                    Ok(reference) => Endpoint::Manifest(name, reference),
                    Err(_) => Endpoint::InvalidReference(name, r.to_owned()),
                })
            }
            (_, "blobs", d) if !d.is_empty() => {
                let name = name(2)?;
                Ok(Endpoint::Blob(name, d.parse()?))
            }
            (_, "referrers", d) if !d.is_empty() => {
                let name = name(2)?;
                Ok(Endpoint::Referrers(name, d.parse()?))
            }
            _ => Err(not_found()),
        }
    }

    /// The access class `method` needs on this endpoint.
    pub fn access(&self, method: &Method) -> Access {
        match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => Access::Pull,
            // Cancelling one's own upload is part of pushing.
            Method::DELETE if !matches!(self, Endpoint::Upload(..)) => Access::Delete,
            _ => Access::Push,
        }
    }

    /// The repository the endpoint is scoped to, if any.
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags(r)
            | Endpoint::Manifest(r, _)
            | Endpoint::InvalidReference(r, _)
            | Endpoint::Blob(r, _)
            | Endpoint::Uploads(r)
            | Endpoint::Upload(r, _)
            | Endpoint::Referrers(r, _) => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    /// Every route: (method, path) → (endpoint, the access it needs).
    #[test]
    fn table() {
        use Access::{Delete, Pull, Push};
        use Method as M;
        let r = |s: &str| s.parse::<RepoName>().unwrap();
        let dig: Digest = d().parse().unwrap();
        let tag = |t: &str| t.parse::<Reference>().unwrap();
        let by_digest = Reference::Digest(dig.clone());
        let invalid = |text: &str| Endpoint::InvalidReference(r("a"), text.into());
        let upload = Endpoint::Upload(r("a"), "123".into());
        let cases: Vec<(Method, String, Endpoint, Access)> = vec![
            (M::GET, "/v2/".into(), Endpoint::Base, Pull),
            (M::HEAD, "/v2".into(), Endpoint::Base, Pull),
            (M::GET, "/v2/_catalog".into(), Endpoint::Catalog, Pull),
            (
                M::GET,
                "/v2/a/b/tags/list".into(),
                Endpoint::Tags(r("a/b")),
                Pull,
            ),
            (
                M::GET,
                "/v2/a/manifests/latest".into(),
                Endpoint::Manifest(r("a"), tag("latest")),
                Pull,
            ),
            (
                M::HEAD,
                "/v2/a/manifests/latest".into(),
                Endpoint::Manifest(r("a"), tag("latest")),
                Pull,
            ),
            (
                M::PUT,
                "/v2/a/manifests/latest".into(),
                Endpoint::Manifest(r("a"), tag("latest")),
                Push,
            ),
            (
                M::DELETE,
                "/v2/a/manifests/latest".into(),
                Endpoint::Manifest(r("a"), tag("latest")),
                Delete,
            ),
            (
                M::GET,
                format!("/v2/x/manifests/y/manifests/{}", d()),
                Endpoint::Manifest(r("x/manifests/y"), by_digest.clone()),
                Pull,
            ),
            (
                M::GET,
                "/v2/a/manifests/bad:digest".into(),
                invalid("bad:digest"),
                Pull,
            ),
            (M::PUT, "/v2/a/manifests/-tag".into(), invalid("-tag"), Push),
            (
                M::DELETE,
                "/v2/a/manifests/.INVALID_MANIFEST_NAME".into(),
                invalid(".INVALID_MANIFEST_NAME"),
                Delete,
            ),
            (
                M::GET,
                format!("/v2/a/blobs/{}", d()),
                Endpoint::Blob(r("a"), dig.clone()),
                Pull,
            ),
            (
                M::HEAD,
                format!("/v2/a/blobs/{}", d()),
                Endpoint::Blob(r("a"), dig.clone()),
                Pull,
            ),
            (
                M::DELETE,
                format!("/v2/a/blobs/{}", d()),
                Endpoint::Blob(r("a"), dig.clone()),
                Delete,
            ),
            (
                M::GET,
                format!("/v2/a/blobs/b/blobs/{}", d()),
                Endpoint::Blob(r("a/blobs/b"), dig.clone()),
                Pull,
            ),
            (
                M::POST,
                "/v2/a/b/blobs/uploads/".into(),
                Endpoint::Uploads(r("a/b")),
                Push,
            ),
            (
                M::POST,
                "/v2/a/b/blobs/uploads".into(),
                Endpoint::Uploads(r("a/b")),
                Push,
            ),
            (
                M::GET,
                "/v2/a/blobs/uploads/123".into(),
                upload.clone(),
                Pull,
            ),
            (
                M::PATCH,
                "/v2/a/blobs/uploads/123".into(),
                upload.clone(),
                Push,
            ),
            (
                M::PUT,
                "/v2/a/blobs/uploads/123".into(),
                upload.clone(),
                Push,
            ),
            // Cancelling one's own upload is part of pushing.
            (M::DELETE, "/v2/a/blobs/uploads/123".into(), upload, Push),
            (
                M::GET,
                format!("/v2/a/referrers/{}", d()),
                Endpoint::Referrers(r("a"), dig),
                Pull,
            ),
        ];
        for (method, path, endpoint, access) in cases {
            let parsed = Endpoint::parse(&path).unwrap();
            assert_eq!(parsed, endpoint, "{method} {path}");
            assert_eq!(parsed.access(&method), access, "{method} {path}");
        }
    }

    #[test]
    fn rejects() {
        let code = |p: &str| Endpoint::parse(p).unwrap_err().code;
        assert_eq!(code("/v3/"), ErrorCode::NotFound);
        assert_eq!(code("/v2x"), ErrorCode::NotFound);
        assert_eq!(code("/v2/a"), ErrorCode::NotFound);
        assert_eq!(code("/v2/tags/list"), ErrorCode::NotFound);
        assert_eq!(code("/v2/manifests/x"), ErrorCode::NotFound);
        assert_eq!(code("/v2/A/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a%2Fb/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/../b/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a//b/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:abc"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/"), ErrorCode::NotFound);
        assert_eq!(code("/v2/a/referrers/latest"), ErrorCode::DigestInvalid);
    }
}
