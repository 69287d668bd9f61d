//! The registry's answers as typed values. Each builds its status and headers from validated
//! types (digests, repository names, tags, upload ids), so a header cannot be misspelt,
//! forgotten or silently dropped; a value that cannot be a header (which these types rule out)
//! makes the answer a 500 rather than a quiet omission.

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use registry_core::{BlobRead, Digest, ManifestInfo, PutManifest, RepoName, Tag, UploadStatus};

use crate::{ApiError, ErrorCode};

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// Headers being put together for an answer.
struct Headers {
    map: HeaderMap,
    invalid: Option<HeaderName>,
}

impl Default for Headers {
    fn default() -> Headers {
        Headers {
            // Room for the most any answer sets, and the API-version header added to all.
            map: HeaderMap::with_capacity(8),
            invalid: None,
        }
    }
}

/// `"<digest>"`, an entity tag.
fn etag(digest: &str) -> String {
    let mut etag = String::with_capacity(digest.len() + 2);
    etag.push('"');
    etag.push_str(digest);
    etag.push('"');
    etag
}

/// What a header value is made from, converted without a detour through `Display` where the
/// type allows (a manifest GET sets four headers: formatting them was 3 % of its CPU).
trait HeaderText {
    fn header_value(self) -> Option<HeaderValue>;
}

impl HeaderText for &str {
    fn header_value(self) -> Option<HeaderValue> {
        HeaderValue::from_str(self).ok()
    }
}

impl HeaderText for String {
    fn header_value(self) -> Option<HeaderValue> {
        HeaderValue::try_from(self).ok()
    }
}

impl HeaderText for u64 {
    fn header_value(self) -> Option<HeaderValue> {
        Some(HeaderValue::from(self))
    }
}

impl HeaderText for &Digest {
    fn header_value(self) -> Option<HeaderValue> {
        self.to_string().header_value()
    }
}

impl HeaderText for Digest {
    fn header_value(self) -> Option<HeaderValue> {
        (&self).header_value()
    }
}

impl HeaderText for Tag {
    fn header_value(self) -> Option<HeaderValue> {
        self.as_str().header_value()
    }
}

impl Headers {
    fn set(mut self, name: HeaderName, value: impl HeaderText) -> Self {
        match value.header_value() {
            Some(v) => {
                self.map.append(name, v);
            }
            None => self.invalid = Some(name),
        }
        self
    }

    fn answer(self, status: StatusCode, body: Body) -> Response {
        if let Some(name) = self.invalid {
            return ApiError::new(
                ErrorCode::Unknown,
                format!("the answer's {name} header could not be written"),
            )
            .into_response();
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = self.map;
        response
    }
}

/// 201 for a blob or manifest that is stored: its URL and digest (and for a manifest, its
/// subject and the extra tags it was given).
pub(crate) struct Created {
    location: String,
    digest: Digest,
    subject: Option<Digest>,
    tags: Vec<Tag>,
}

impl Created {
    pub(crate) fn blob(name: &RepoName, digest: Digest) -> Created {
        Created {
            location: format!("/v2/{name}/blobs/{digest}"),
            digest,
            subject: None,
            tags: Vec::new(),
        }
    }

    pub(crate) fn manifest(name: &RepoName, put: PutManifest, tags: Vec<Tag>) -> Created {
        Created {
            location: format!("/v2/{name}/manifests/{}", put.digest),
            digest: put.digest,
            subject: put.subject,
            tags,
        }
    }
}

impl IntoResponse for Created {
    fn into_response(self) -> Response {
        let mut headers = Headers::default()
            .set(LOCATION, self.location)
            .set(DOCKER_CONTENT_DIGEST, &self.digest)
            .set(CONTENT_LENGTH, 0);
        if let Some(subject) = self.subject {
            headers = headers.set(HeaderName::from_static("oci-subject"), subject);
        }
        for tag in self.tags {
            headers = headers.set(HeaderName::from_static("oci-tag"), tag);
        }
        headers.answer(StatusCode::CREATED, Body::empty())
    }
}

/// Where an upload session stands: 202 after POST and PATCH, 204 for GET.
pub(crate) struct UploadProgress {
    status: StatusCode,
    location: String,
    upload: UploadStatus,
}

impl UploadProgress {
    pub(crate) fn accepted(name: &RepoName, upload: UploadStatus) -> UploadProgress {
        UploadProgress {
            status: StatusCode::ACCEPTED,
            location: format!("/v2/{name}/blobs/uploads/{}", upload.id),
            upload,
        }
    }

    pub(crate) fn status(name: &RepoName, upload: UploadStatus) -> UploadProgress {
        UploadProgress {
            status: StatusCode::NO_CONTENT,
            ..UploadProgress::accepted(name, upload)
        }
    }
}

/// The `Range` value for an upload holding `size` bytes (the Docker client parses `%d-%d`).
pub(crate) fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl IntoResponse for UploadProgress {
    fn into_response(self) -> Response {
        Headers::default()
            .set(LOCATION, self.location)
            .set(
                HeaderName::from_static("range"),
                upload_range(self.upload.size),
            )
            .set(
                HeaderName::from_static("docker-upload-uuid"),
                self.upload.id,
            )
            .set(CONTENT_LENGTH, 0)
            .answer(self.status, Body::empty())
    }
}

/// 202 with no body: a deletion was done.
pub(crate) struct Deleted;

impl IntoResponse for Deleted {
    fn into_response(self) -> Response {
        Headers::default()
            .set(CONTENT_LENGTH, 0)
            .answer(StatusCode::ACCEPTED, Body::empty())
    }
}

/// 204 with no body: an upload was cancelled.
pub(crate) struct Cancelled;

impl IntoResponse for Cancelled {
    fn into_response(self) -> Response {
        Headers::default().answer(StatusCode::NO_CONTENT, Body::empty())
    }
}

/// A blob as served: a redirect to where its bytes are, its headers alone (HEAD), or its bytes,
/// whole or a range of them.
pub(crate) enum BlobAnswer {
    Redirect {
        url: String,
        digest: Digest,
    },
    Head {
        digest: Digest,
        size: u64,
    },
    Bytes {
        digest: Digest,
        read: BlobRead,
        partial: bool,
    },
}

/// What every answer carrying content says of it: type, length, digest and entity tag.
fn content_headers(content_type: &str, length: u64, digest: &Digest) -> Headers {
    let digest = digest.to_string();
    let etag = etag(&digest);
    Headers::default()
        .set(CONTENT_TYPE, content_type)
        .set(CONTENT_LENGTH, length)
        .set(DOCKER_CONTENT_DIGEST, digest)
        .set(HeaderName::from_static("etag"), etag)
}

fn blob_headers(digest: &Digest, length: u64) -> Headers {
    content_headers("application/octet-stream", length, digest)
        .set(HeaderName::from_static("accept-ranges"), "bytes")
        .set(HeaderName::from_static("cache-control"), "max-age=31536000")
}

impl IntoResponse for BlobAnswer {
    fn into_response(self) -> Response {
        match self {
            BlobAnswer::Redirect { url, digest } => Headers::default()
                .set(LOCATION, url)
                .set(DOCKER_CONTENT_DIGEST, digest)
                .answer(StatusCode::TEMPORARY_REDIRECT, Body::empty()),
            BlobAnswer::Head { digest, size } => {
                blob_headers(&digest, size).answer(StatusCode::OK, Body::empty())
            }
            BlobAnswer::Bytes {
                digest,
                read,
                partial,
            } => {
                let (start, end) = (read.range.start, read.range.end);
                let headers = blob_headers(&digest, end - start);
                let (status, headers) = if !partial {
                    (StatusCode::OK, headers)
                } else {
                    (
                        StatusCode::PARTIAL_CONTENT,
                        headers.set(
                            HeaderName::from_static("content-range"),
                            format!("bytes {start}-{}/{}", end.saturating_sub(1), read.size),
                        ),
                    )
                };
                let stream = if end - start >= READ_AHEAD_FROM {
                    read_ahead(read.stream)
                } else {
                    read.stream
                };
                headers.answer(status, Body::from_stream(stream))
            }
        }
    }
}

/// Bodies at least this long are read ahead (see [`read_ahead`]); the filesystem reads them
/// in its big chunks.
const READ_AHEAD_FROM: u64 = registry_core::open::BIG_READ_FROM;

/// Chunks read ahead of what the connection has sent, at most.
const READ_AHEAD: usize = 1;

/// `stream`, read up to [`READ_AHEAD`] chunks ahead on a task of its own, so that reading
/// the next chunks (on the filesystem, mapping or copying them on the blocking pool)
/// overlaps sending this one instead of waiting for it. Memory stays bounded (three chunks:
/// one queued, one read and waiting for room, one being sent; a filesystem reads bodies this
/// long in 4 MiB chunks, and two queued were no faster than one);
/// when the client goes away, the body and then the task end.
fn read_ahead(mut stream: registry_core::ByteStream) -> registry_core::ByteStream {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

/// A manifest: its stored media type, length and digest, and its exact bytes (none for HEAD).
pub(crate) struct ManifestAnswer {
    pub(crate) info: ManifestInfo,
    pub(crate) bytes: Option<Bytes>,
}

impl IntoResponse for ManifestAnswer {
    fn into_response(self) -> Response {
        let info = &self.info;
        content_headers(&info.media_type, info.size, &info.digest).answer(
            StatusCode::OK,
            self.bytes.map_or_else(Body::empty, Body::from),
        )
    }
}

/// A JSON document (a listing), with a `Link` to the next page if there is one.
pub(crate) struct JsonPage {
    pub(crate) content_type: &'static str,
    /// The rendered document.
    pub(crate) body: Vec<u8>,
    pub(crate) next: Option<String>,
    /// `OCI-Filters-Applied`, for filtered referrers.
    pub(crate) filters: Option<&'static str>,
}

impl IntoResponse for JsonPage {
    fn into_response(self) -> Response {
        let mut headers = Headers::default().set(CONTENT_TYPE, self.content_type);
        if let Some(next) = self.next {
            headers = headers.set(
                HeaderName::from_static("link"),
                format!("<{next}>; rel=\"next\""),
            );
        }
        if let Some(filters) = self.filters {
            headers = headers.set(HeaderName::from_static("oci-filters-applied"), filters);
        }
        headers.answer(StatusCode::OK, Body::from(self.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_core::Algorithm;

    #[test]
    fn answers_carry_their_headers() {
        let name: RepoName = "team/app".parse().unwrap();
        let digest = Digest::of(Algorithm::Sha256, b"x");
        let r = Created::blob(&name, digest.clone()).into_response();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(
            r.headers()["location"],
            format!("/v2/team/app/blobs/{digest}")
        );
        assert_eq!(r.headers()["docker-content-digest"], digest.to_string());
        let put = PutManifest {
            digest: digest.clone(),
            subject: Some(digest.clone()),
        };
        let tags = vec!["a".parse().unwrap(), "b".parse().unwrap()];
        let r = Created::manifest(&name, put, tags).into_response();
        assert_eq!(r.headers().get_all("oci-tag").iter().count(), 2);
        assert_eq!(r.headers()["oci-subject"], digest.to_string());
        let upload = UploadStatus {
            id: "0b4e4a6c-4a5e-4c55-9a3c-2f1b6d8e9a10".into(),
            size: 0,
        };
        let r = UploadProgress::status(&name, upload).into_response();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["range"], "0-0");
    }

    #[test]
    fn a_value_that_cannot_be_a_header_is_a_500_not_an_omission() {
        let r = BlobAnswer::Redirect {
            url: "https://s3.example.com/\nx".into(),
            digest: Digest::of(Algorithm::Sha256, b"x"),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn read_ahead_keeps_order_and_stops_at_an_error() {
        use futures::StreamExt;
        let chunks: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"one")),
            Ok(Bytes::from_static(b"two")),
            Err(std::io::Error::other("disk")),
            Ok(Bytes::from_static(b"never")),
        ];
        let got: Vec<_> = read_ahead(futures::stream::iter(chunks).boxed())
            .collect()
            .await;
        assert_eq!(got.len(), 3, "nothing after the error");
        assert_eq!(got[0].as_ref().unwrap(), "one");
        assert_eq!(got[1].as_ref().unwrap(), "two");
        assert!(got[2].is_err());
    }
}
