//! Blob GET/HEAD (with `Range`) and DELETE.

use axum::http::{HeaderValue, Method};
use registry_core::{Digest, RepoName};

use crate::events::{emit, About};
use crate::range::{if_range_holds, parse_range, RangeRequest};
use crate::responses::{BlobAnswer, Deleted};
use crate::{ApiError, ApiResult, ErrorCode, RegistryState, Req};
use registry_events::Action;

/// Serves a blob, as `GET` or `HEAD`: a redirect to where its bytes are (redirect mode, GET
/// only; a `Range` goes along with the client's retry there), its headers alone, or its bytes,
/// whole or the range asked for (RFC 9110: a `Range` under an `If-Range` that is not the
/// blob's strong ETag gets the whole blob).
pub(crate) async fn get(
    s: &RegistryState,
    req: &Req,
    name: RepoName,
    digest: Digest,
) -> ApiResult<BlobAnswer> {
    if req.method == Method::HEAD {
        let size = s.storage.blob_size(&name, &digest).await?;
        return Ok(BlobAnswer::Head { digest, size });
    }
    if let Some(url) = s.storage.blob_url(&name, &digest).await? {
        emit(s, req, Action::Pull, About::blob(&name, &digest, None));
        return Ok(BlobAnswer::Redirect { url, digest });
    }
    let etag = format!("\"{digest}\"");
    let range = match req
        .header("range")
        .filter(|_| if_range_holds(req.header("if-range"), &etag))
    {
        None => None,
        Some(h) => {
            let size = s.storage.blob_size(&name, &digest).await?;
            match parse_range(h, size) {
                RangeRequest::Full => None,
                RangeRequest::Partial(r) => Some(r),
                RangeRequest::Unsatisfiable => return Err(unsatisfiable(size)),
            }
        }
    };
    let partial = range.is_some();
    let read = s.storage.blob_read(&name, &digest, range).await?;
    emit(
        s,
        req,
        Action::Pull,
        About::blob(&name, &digest, Some(read.size)),
    );
    Ok(BlobAnswer::Bytes {
        digest,
        read,
        partial,
    })
}

fn unsatisfiable(size: u64) -> ApiError {
    let err = ApiError::new(ErrorCode::RangeInvalid, "requested range not satisfiable");
    match HeaderValue::try_from(format!("bytes */{size}")) {
        Ok(v) => err.with_header("content-range", v),
        Err(_) => err,
    }
}

pub(crate) async fn delete(
    s: &RegistryState,
    req: &Req,
    name: RepoName,
    digest: Digest,
) -> ApiResult<Deleted> {
    s.storage.blob_delete(&name, &digest).await?;
    emit(
        s,
        req,
        Action::Delete,
        About::deleted(&name, Some(&digest), None),
    );
    Ok(Deleted)
}
