//! Blob uploads: POST (start, monolithic with `?digest=`, or cross-repository mount), PATCH
//! (chunked with `Content-Range`, or streamed without), PUT (finish), GET (status), DELETE
//! (cancel).

use axum::body::{Body, HttpBody as _};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use registry_core::{Algorithm, ByteStream, Digest, RepoName};

use crate::events::{emit, About};
use crate::range::parse_content_range;
use crate::responses::{upload_range, Cancelled, Created, UploadProgress};
use crate::{Access, ApiError, ApiResult, ErrorCode, RegistryState, Req};
use registry_events::Action;

fn stream(body: Body) -> ByteStream {
    body.into_data_stream()
        .map_err(std::io::Error::other)
        .boxed()
}

fn digest_param(req: &Req) -> ApiResult<Option<Digest>> {
    req.query("digest")
        .map(|d| d.parse::<Digest>())
        .transpose()
        .map_err(Into::into)
}

pub(crate) async fn start(
    s: &RegistryState,
    req: &Req,
    body: Body,
    name: RepoName,
) -> ApiResult<Response> {
    if let Some(mount) = req.query("mount") {
        let digest: Digest = mount.parse()?;
        if let Some(from) = req.query("from") {
            let from: RepoName = from.parse()?;
            // Mounting reads the source: a caller who may not pull it gets a plain session.
            let may_read = req
                .caller
                .as_ref()
                .is_none_or(|c| c.may(Access::Pull, from.as_str()));
            if may_read {
                if let Some(size) = s.storage.blob_mount(&name, &from, &digest).await? {
                    let about = About {
                        from: Some(&from),
                        ..About::blob(&name, &digest, Some(size))
                    };
                    emit(s, req, Action::Mount, about);
                    return Ok(Created::blob(&name, digest).into_response());
                }
            }
        }
        // Unknown source or blob: fall back to a regular upload session (202).
    }
    let digest = digest_param(req)?;
    let algorithm = match (req.query("digest-algorithm"), &digest) {
        (Some(a), _) => a.parse::<Algorithm>()?,
        (None, Some(d)) => d.algorithm(),
        (None, None) => Algorithm::Sha256,
    };
    let up = s.storage.upload_start(&name, algorithm).await?;
    if let Some(digest) = digest {
        let len = req.content_length();
        let size = s
            .storage
            .upload_finish(&name, &up.id, &digest, Some((len, stream(body))))
            .await?;
        emit(
            s,
            req,
            Action::Push,
            About::blob(&name, &digest, Some(size)),
        );
        return Ok(Created::blob(&name, digest).into_response());
    }
    // HTTP/2 clients may send a body without Content-Length: the body itself says.
    let up = if !body.is_end_stream() {
        let len = req.content_length();
        s.storage
            .upload_append(&name, &up.id, Some(0), len, stream(body))
            .await?
    } else {
        up
    };
    Ok(UploadProgress::accepted(&name, up).into_response())
}

/// The chunk's start and length from `Content-Range` (if any) and `Content-Length`.
fn chunk_bounds(req: &Req) -> ApiResult<(Option<u64>, Option<u64>)> {
    match req.header("content-range") {
        None if req.headers.contains_key("content-range") => Err(malformed_range()),
        None => Ok((None, req.content_length())),
        Some(h) => {
            let (start, end) = parse_content_range(h).ok_or_else(malformed_range)?;
            let len = end - start + 1;
            if req.content_length().is_some_and(|cl| cl != len) {
                return Err(ApiError::new(
                    ErrorCode::SizeInvalid,
                    "Content-Length does not match Content-Range",
                ));
            }
            Ok((Some(start), Some(len)))
        }
    }
}

fn malformed_range() -> ApiError {
    ApiError::new(
        ErrorCode::RangeInvalid,
        "malformed Content-Range: expected <start>-<end>",
    )
}

pub(crate) async fn patch(
    s: &RegistryState,
    req: &Req,
    body: Body,
    name: RepoName,
    id: String,
) -> ApiResult<UploadProgress> {
    let (start, len) = match chunk_bounds(req) {
        Ok(b) => b,
        Err(e) => {
            // A 416 tells the client where the upload stands, so it can resume.
            let up = s.storage.upload_status(&name, &id).await?;
            return Err(match HeaderValue::try_from(upload_range(up.size)) {
                Ok(range) => e.with_header("range", range),
                Err(_) => e,
            });
        }
    };
    let up = s
        .storage
        .upload_append(&name, &id, start, len, stream(body))
        .await?;
    Ok(UploadProgress::accepted(&name, up))
}

pub(crate) async fn finish(
    s: &RegistryState,
    req: &Req,
    body: Body,
    name: RepoName,
    id: String,
) -> ApiResult<Created> {
    let digest = digest_param(req)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required",
        )
    })?;
    let last = if !body.is_end_stream() {
        let (start, len) = chunk_bounds(req)?;
        if let Some(start) = start {
            let up = s.storage.upload_status(&name, &id).await?;
            if start != up.size {
                return Err(registry_core::Error::RangeInvalid {
                    expected: up.size,
                    got: start,
                }
                .into());
            }
        }
        Some((len, stream(body)))
    } else {
        None
    };
    let size = s.storage.upload_finish(&name, &id, &digest, last).await?;
    emit(
        s,
        req,
        Action::Push,
        About::blob(&name, &digest, Some(size)),
    );
    Ok(Created::blob(&name, digest))
}

pub(crate) async fn status(
    s: &RegistryState,
    name: RepoName,
    id: String,
) -> ApiResult<UploadProgress> {
    let up = s.storage.upload_status(&name, &id).await?;
    Ok(UploadProgress::status(&name, up))
}

pub(crate) async fn cancel(s: &RegistryState, name: RepoName, id: String) -> ApiResult<Cancelled> {
    s.storage.upload_cancel(&name, &id).await?;
    Ok(Cancelled)
}
