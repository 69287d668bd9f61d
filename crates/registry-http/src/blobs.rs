//! Blob GET/HEAD (with `Range`) and DELETE.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use registry_core::{Digest, RepoName};

use crate::range::{if_range_holds, parse_range, RangeRequest};
use crate::{respond, ApiError, ApiResult, ErrorCode, RegistryState, Req};

fn blob_headers(digest: &Digest, length: u64) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/octet-stream".into()),
        ("content-length", length.to_string()),
        ("docker-content-digest", digest.to_string()),
        ("etag", format!("\"{digest}\"")),
        ("accept-ranges", "bytes".into()),
        ("cache-control", "max-age=31536000".into()),
    ]
}

pub(crate) async fn get(
    s: &RegistryState,
    req: &Req,
    name: RepoName,
    digest: Digest,
) -> ApiResult<Response> {
    let etag = format!("\"{digest}\"");
    let range_header = req
        .header("range")
        .filter(|_| req.method == Method::GET && if_range_holds(req.header("if-range"), &etag));
    if req.method == Method::GET {
        // Redirect mode: the bytes flow from the object store (a Range goes along with the
        // client's retry of the request there).
        if let Some(url) = s.storage.blob_url(&name, &digest).await? {
            return Ok(respond(
                StatusCode::TEMPORARY_REDIRECT,
                vec![
                    ("location", url),
                    ("docker-content-digest", digest.to_string()),
                ],
                Body::empty(),
            ));
        }
    }
    if req.method == Method::HEAD {
        let size = s.storage.blob_size(&name, &digest).await?;
        return Ok(respond(
            StatusCode::OK,
            blob_headers(&digest, size),
            Body::empty(),
        ));
    }
    let range = match range_header {
        None => None,
        Some(h) => {
            let size = s.storage.blob_size(&name, &digest).await?;
            match parse_range(h, size) {
                RangeRequest::Full => None,
                RangeRequest::Partial(r) => Some(r),
                RangeRequest::Unsatisfiable => {
                    return Err(ApiError::new(
                        ErrorCode::RangeInvalid,
                        "requested range not satisfiable",
                    )
                    .with_header(
                        "content-range",
                        format!("bytes */{size}").parse().expect("ascii"),
                    ));
                }
            }
        }
    };
    let partial = range.is_some();
    let read = s.storage.blob_read(&name, &digest, range).await?;
    let mut headers = blob_headers(&digest, read.range.end - read.range.start);
    let status = if partial {
        let last = read.range.end.saturating_sub(1);
        headers.push((
            "content-range",
            format!("bytes {}-{}/{}", read.range.start, last, read.size),
        ));
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    Ok(respond(status, headers, Body::from_stream(read.stream)))
}

pub(crate) async fn delete(
    s: &RegistryState,
    name: RepoName,
    digest: Digest,
) -> ApiResult<Response> {
    s.storage.blob_delete(&name, &digest).await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        vec![("content-length", "0".into())],
        Body::empty(),
    ))
}
