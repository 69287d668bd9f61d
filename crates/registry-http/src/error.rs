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
        use ErrorCode::*;
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
    fn from(e: CoreError) -> Self {
        let message = e.to_string();
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
            CoreError::ManifestBlobUnknown(d) => {
                (ErrorCode::ManifestBlobUnknown, Some(json!({ "digest": d })))
            }
            CoreError::Unsupported(_) => (ErrorCode::Unsupported, None),
            CoreError::Body(_) => (ErrorCode::BlobUploadInvalid, None),
            CoreError::Corrupt { .. } => (ErrorCode::Unknown, None),
            CoreError::Storage(_) => (ErrorCode::Unavailable, None),
            CoreError::Doomed(d) => (ErrorCode::ManifestBlobUnknown, Some(json!({ "digest": d }))),
            CoreError::Busy(_) => (ErrorCode::Unavailable, None),
            _ => (ErrorCode::Unknown, None),
        };
        ApiError {
            code,
            message,
            detail,
            headers: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code.parts();
        let mut entry = json!({ "code": code, "message": self.message });
        if let Some(d) = self.detail {
            entry["detail"] = d;
        }
        let body = json!({ "errors": [entry] }).to_string();
        let mut response = (status, [("content-type", "application/json")], body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        if status.is_server_error() {
            // Logged once here, in full; the client sees the message only.
            response.extensions_mut().insert(ServerFault(self.message));
        }
        response
    }
}

/// Marks a response as a server-side failure, for the request log.
#[derive(Clone, Debug)]
pub struct ServerFault(pub String);

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
