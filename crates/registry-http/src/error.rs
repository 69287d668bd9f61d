//! OCI error codes and the one place that turns them into HTTP answers with the
//! `{"errors":[{"code","message","detail"}]}` envelope.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry_core::Error as CoreError;
use serde_json::json;

/// Error codes of the distribution spec, plus the Docker codes the registry uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Blob unknown to the repository.
    BlobUnknown,
    /// The upload is invalid.
    BlobUploadInvalid,
    /// Upload session unknown.
    BlobUploadUnknown,
    /// Digest malformed, unsupported or not matching the content.
    DigestInvalid,
    /// A manifest references a blob or manifest the repository lacks.
    ManifestBlobUnknown,
    /// The manifest is invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Repository name invalid.
    NameInvalid,
    /// Repository unknown.
    NameUnknown,
    /// Content length mismatch.
    SizeInvalid,
    /// The body is larger than the registry accepts (413).
    TooLarge,
    /// Authentication required.
    Unauthorized,
    /// Access denied.
    Denied,
    /// Operation unsupported (405).
    Unsupported,
    /// No such endpoint (404).
    NotFound,
    /// Too many requests.
    TooManyRequests,
    /// A tag is invalid.
    TagInvalid,
    /// A chunk or range that cannot be satisfied (416).
    RangeInvalid,
    /// A bad `n` for pagination.
    PaginationNumberInvalid,
    /// An unexpected server failure.
    Unknown,
    /// The storage backend is unavailable.
    Unavailable,
    /// An upstream registry answered unusably (502).
    BadGateway,
    /// An upstream registry cannot be reached and nothing cached answers (503).
    UpstreamUnavailable,
    /// The request body stopped arriving (408); answered by servers, not handlers.
    RequestTimeout,
    /// The request line is longer than the server reads (414).
    UriTooLong,
    /// The request's headers are larger than the server reads (431).
    HeadersTooLarge,
    /// A request the server could not parse (400).
    BadRequest,
}

impl ErrorCode {
    /// The code string and HTTP status.
    pub fn parts(self) -> (&'static str, StatusCode) {
        use ErrorCode::{
            BadGateway, BadRequest, BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, Denied,
            DigestInvalid, HeadersTooLarge, ManifestBlobUnknown, ManifestInvalid, ManifestUnknown,
            NameInvalid, NameUnknown, NotFound, PaginationNumberInvalid, RangeInvalid,
            RequestTimeout, SizeInvalid, TagInvalid, TooLarge, TooManyRequests, Unauthorized,
            Unavailable, Unknown, Unsupported, UpstreamUnavailable, UriTooLong,
        };
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
            BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            DigestInvalid => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestBlobUnknown => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
            ManifestInvalid => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestUnknown => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            NameInvalid => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            NameUnknown => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            SizeInvalid => ("SIZE_INVALID", StatusCode::BAD_REQUEST),
            TooLarge => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
            Unauthorized => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            Denied => ("DENIED", StatusCode::FORBIDDEN),
            Unsupported => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND),
            TooManyRequests => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            TagInvalid => ("TAG_INVALID", StatusCode::BAD_REQUEST),
            RangeInvalid => ("RANGE_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            PaginationNumberInvalid => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
            Unknown => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
            Unavailable => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
            BadGateway => ("UNAVAILABLE", StatusCode::BAD_GATEWAY),
            UpstreamUnavailable => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
            RequestTimeout => ("REQUEST_TIMEOUT", StatusCode::REQUEST_TIMEOUT),
            UriTooLong => ("URI_TOO_LONG", StatusCode::URI_TOO_LONG),
            HeadersTooLarge => (
                "HEADERS_TOO_LARGE",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ),
            BadRequest => ("BAD_REQUEST", StatusCode::BAD_REQUEST),
        }
    }
}

/// An error answer: a code, a message, optional detail and extra headers.
#[derive(Debug)]
pub struct ApiError {
    /// The OCI code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Structured detail.
    pub detail: Option<serde_json::Value>,
    /// Headers to send along (e.g. `Range` on a 416, `WWW-Authenticate` on a 401).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Adds detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((HeaderName::from_static(name), value));
        self
    }
}

impl From<CoreError> for ApiError {
    /// Every core error has its answer here; there is no catch-all, so a new variant must be
    /// given one.
    fn from(e: CoreError) -> Self {
        let message = full_message(&e);
        let (code, detail) = match &e {
            CoreError::NameInvalid(n) => (ErrorCode::NameInvalid, Some(json!({ "name": n }))),
            CoreError::TagInvalid(t) => (ErrorCode::TagInvalid, Some(json!({ "tag": t }))),
            CoreError::DigestInvalid(_) => (ErrorCode::DigestInvalid, None),
            CoreError::DigestMismatch { expected, actual } => (
                ErrorCode::DigestInvalid,
                Some(json!({ "expected": expected, "actual": actual })),
            ),
            CoreError::BlobUnknown(d) => (ErrorCode::BlobUnknown, Some(json!({ "digest": d }))),
            CoreError::ManifestUnknown(r) => {
                (ErrorCode::ManifestUnknown, Some(json!({ "reference": r })))
            }
            CoreError::NameUnknown(n) => (ErrorCode::NameUnknown, Some(json!({ "name": n }))),
            CoreError::UploadUnknown => (ErrorCode::BlobUploadUnknown, None),
            CoreError::RangeInvalid { expected, .. }
            | CoreError::ConcurrentAppend { size: expected } => {
                let range = format!("0-{}", expected.saturating_sub(1));
                let err = ApiError::new(ErrorCode::RangeInvalid, message);
                return match HeaderValue::from_str(&range) {
                    Ok(v) => err.with_header("range", v),
                    Err(_) => err,
                };
            }
            CoreError::SizeInvalid { .. } => (ErrorCode::SizeInvalid, None),
            CoreError::ManifestInvalid(_) => (ErrorCode::ManifestInvalid, None),
            CoreError::ManifestBlobUnknown(d) | CoreError::Doomed(d) => {
                (ErrorCode::ManifestBlobUnknown, Some(json!({ "digest": d })))
            }
            CoreError::Unsupported(_) => (ErrorCode::Unsupported, None),
            CoreError::Body(_) => (ErrorCode::BlobUploadInvalid, None),
            CoreError::Storage(_) | CoreError::GcRunning { .. } => (ErrorCode::Unavailable, None),
            CoreError::UpstreamUnavailable(_) => (ErrorCode::UpstreamUnavailable, None),
            CoreError::Denied(_) => (ErrorCode::Denied, None),
            CoreError::Upstream(_) => (ErrorCode::BadGateway, None),
            CoreError::Corrupt { .. } | CoreError::Config(_) | CoreError::Open { .. } => {
                (ErrorCode::Unknown, None)
            }
        };
        ApiError {
            code,
            message,
            detail,
            headers: Vec::new(),
        }
    }
}

/// An error's message with its causes, as far as they say something new.
fn full_message(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    message
}

/// A short id that ties a server failure's answer to its log line.
fn fault_id() -> String {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    format!("{:016x}", random.hash_one(std::time::SystemTime::now()))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code.parts();
        // A server failure is told to the client in general terms, with an id; the log line
        // with the same id has the whole cause.
        let fault = status
            .is_server_error()
            .then(|| (fault_id(), self.message.clone()));
        let message = match &fault {
            None => self.message,
            Some((id, _)) => match self.code {
                // What an upstream did says nothing about this registry's insides.
                ErrorCode::BadGateway | ErrorCode::UpstreamUnavailable => {
                    format!("{} (request {id})", self.message)
                }
                ErrorCode::Unavailable => {
                    format!("storage is unavailable; try again later (request {id})")
                }
                _ => format!("the registry failed to complete the request (request {id})"),
            },
        };
        let mut entry = json!({ "code": code, "message": message });
        if let Some(d) = self.detail {
            entry["detail"] = d;
        }
        let body = json!({ "errors": [entry] }).to_string();
        let mut response = (status, [("content-type", "application/json")], body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        if let Some((id, reason)) = fault {
            response.extensions_mut().insert(ServerFault { id, reason });
        }
        response
    }
}

/// Marks a response as a server-side failure, for the request log: the id the client was
/// given and the whole cause.
#[derive(Clone, Debug)]
pub struct ServerFault {
    /// The id in the client's message.
    pub id: String,
    /// What went wrong, with its causes.
    pub reason: String,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode as S;
    use registry_core::{Algorithm, Digest};

    /// Every core error variant and the answer it gets.
    #[test]
    fn every_core_error_has_its_answer() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        let storage = || object_store::Error::Generic {
            store: "S3",
            source: "connection refused by 10.0.0.9".into(),
        };
        let cases: Vec<(CoreError, &str, S)> = vec![
            (
                CoreError::NameInvalid("A".into()),
                "NAME_INVALID",
                S::BAD_REQUEST,
            ),
            (
                CoreError::TagInvalid("-".into()),
                "TAG_INVALID",
                S::BAD_REQUEST,
            ),
            (
                CoreError::DigestInvalid("x".into()),
                "DIGEST_INVALID",
                S::BAD_REQUEST,
            ),
            (
                CoreError::DigestMismatch {
                    expected: d.clone(),
                    actual: d.clone(),
                },
                "DIGEST_INVALID",
                S::BAD_REQUEST,
            ),
            (
                CoreError::BlobUnknown(d.clone()),
                "BLOB_UNKNOWN",
                S::NOT_FOUND,
            ),
            (
                CoreError::ManifestUnknown("t".into()),
                "MANIFEST_UNKNOWN",
                S::NOT_FOUND,
            ),
            (
                CoreError::NameUnknown("a".into()),
                "NAME_UNKNOWN",
                S::NOT_FOUND,
            ),
            (
                CoreError::UploadUnknown,
                "BLOB_UPLOAD_UNKNOWN",
                S::NOT_FOUND,
            ),
            (
                CoreError::RangeInvalid {
                    expected: 10,
                    got: 0,
                },
                "RANGE_INVALID",
                S::RANGE_NOT_SATISFIABLE,
            ),
            (
                CoreError::ConcurrentAppend { size: 10 },
                "RANGE_INVALID",
                S::RANGE_NOT_SATISFIABLE,
            ),
            (
                CoreError::SizeInvalid {
                    declared: 1,
                    received: 2,
                },
                "SIZE_INVALID",
                S::BAD_REQUEST,
            ),
            (
                CoreError::ManifestInvalid("x".into()),
                "MANIFEST_INVALID",
                S::BAD_REQUEST,
            ),
            (
                CoreError::ManifestBlobUnknown(d.clone()),
                "MANIFEST_BLOB_UNKNOWN",
                S::BAD_REQUEST,
            ),
            (
                CoreError::Doomed(d.clone()),
                "MANIFEST_BLOB_UNKNOWN",
                S::BAD_REQUEST,
            ),
            (
                CoreError::Unsupported("x".into()),
                "UNSUPPORTED",
                S::METHOD_NOT_ALLOWED,
            ),
            (
                CoreError::Body(std::io::Error::other("reset")),
                "BLOB_UPLOAD_INVALID",
                S::BAD_REQUEST,
            ),
            (
                CoreError::Corrupt {
                    path: "p".into(),
                    reason: "r".into(),
                },
                "UNKNOWN",
                S::INTERNAL_SERVER_ERROR,
            ),
            (
                CoreError::Storage(storage()),
                "UNAVAILABLE",
                S::SERVICE_UNAVAILABLE,
            ),
            (
                CoreError::GcRunning {
                    expires_in: std::time::Duration::from_secs(9),
                },
                "UNAVAILABLE",
                S::SERVICE_UNAVAILABLE,
            ),
            (
                CoreError::Denied("read-only mirror".into()),
                "DENIED",
                S::FORBIDDEN,
            ),
            (
                CoreError::Upstream("digest mismatch".into()),
                "UNAVAILABLE",
                S::BAD_GATEWAY,
            ),
            (
                CoreError::UpstreamUnavailable("timed out".into()),
                "UNAVAILABLE",
                S::SERVICE_UNAVAILABLE,
            ),
            (
                CoreError::Config("x".into()),
                "UNKNOWN",
                S::INTERNAL_SERVER_ERROR,
            ),
            (
                CoreError::Open {
                    location: "l".into(),
                    source: "s".into(),
                },
                "UNKNOWN",
                S::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, code, status) in cases {
            let what = format!("{error:?}");
            let api = ApiError::from(error);
            assert_eq!(api.code.parts(), (code, status), "{what}");
        }
    }

    /// A server failure tells the client an id, not the cause; the log gets the cause.
    #[tokio::test]
    async fn server_failures_keep_their_cause_for_the_log() {
        let error = CoreError::Storage(object_store::Error::Generic {
            store: "S3",
            source: "connection refused by 10.0.0.9".into(),
        });
        let response = ApiError::from(error).into_response();
        let fault = response.extensions().get::<ServerFault>().cloned().unwrap();
        assert!(
            fault.reason.contains("connection refused by 10.0.0.9"),
            "{fault:?}"
        );
        let body = axum::body::to_bytes(response.into_body(), 10_000)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("10.0.0.9"), "{body}");
        assert!(body.contains(&format!("(request {})", fault.id)), "{body}");
        // Client errors keep their message.
        let r = ApiError::from(CoreError::TagInvalid("-x".into())).into_response();
        assert!(r.extensions().get::<ServerFault>().is_none());
    }
}
