//! Manifest GET/HEAD (with `Accept` negotiation), PUT and DELETE.

use axum::body::Body;
use axum::http::header::ACCEPT;
use axum::http::Method;
use registry_core::manifest::{essence, MANIFEST_TYPES};
use registry_core::{Reference, RepoName, Tag};

use crate::events::{emit, About};
use crate::responses::{Created, Deleted, ManifestAnswer};
use crate::{ApiError, ApiResult, ErrorCode, RegistryState, Req};
use registry_events::Action;

/// Whether the client's `Accept` headers admit `media_type`. The stored manifest is served
/// unless the client lists only manifest types and not this one; it is never converted.
fn acceptable(req: &Req, media_type: &str) -> bool {
    let mut listed = req
        .headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(essence)
        .filter(|t| !t.is_empty())
        .peekable();
    listed.peek().is_none() || listed.any(|t| t == media_type || !MANIFEST_TYPES.contains(&t))
}

pub(crate) async fn get(
    s: &RegistryState,
    req: &Req,
    name: RepoName,
    reference: Reference,
) -> ApiResult<ManifestAnswer> {
    let (info, bytes) = if req.method == Method::HEAD {
        (s.storage.manifest_info(&name, &reference).await?, None)
    } else {
        let (info, bytes) = s.storage.manifest_get(&name, &reference).await?;
        (info, Some(bytes))
    };
    if !acceptable(req, &info.media_type) {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "the manifest is a {} and the Accept header excludes it",
                info.media_type
            ),
        ));
    }
    if bytes.is_some() {
        let tag = match &reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        let about = About::manifest(&name, &info.digest, &info.media_type, info.size, tag);
        emit(s, req, Action::Pull, about);
    }
    Ok(ManifestAnswer { info, bytes })
}

pub(crate) async fn put(
    s: &RegistryState,
    req: &Req,
    body: Body,
    name: RepoName,
    reference: Reference,
) -> ApiResult<Created> {
    let limit = s.config.manifest_max_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("manifests are limited to {limit} bytes"),
        )
    };
    if req.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let tags = req
        .query_all("tag")
        .iter()
        .map(|t| t.parse::<Tag>())
        .collect::<Result<Vec<_>, _>>()?;
    let content_type = req.header("content-type").map(str::to_owned);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let length_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            too_large()
        } else {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest failed: {e}"),
            )
        }
    })?;
    let size = bytes.len() as u64;
    let media_type = crate::events::wanted(s, Action::Push, &name)
        .then(|| pushed_media_type(content_type.as_deref(), &bytes));
    let put = s
        .storage
        .manifest_put(&name, &reference, content_type.as_deref(), bytes, &tags)
        .await?;
    if let Some(media_type) = media_type {
        let by_reference = match &reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        let named: Vec<Option<&str>> = match (by_reference, tags.is_empty()) {
            (None, true) => vec![None],
            (r, _) => r
                .into_iter()
                .chain(tags.iter().map(Tag::as_str))
                .map(Some)
                .collect(),
        };
        for tag in named {
            let about = About::manifest(&name, &put.digest, &media_type, size, tag);
            emit(s, req, Action::Push, about);
        }
    }
    Ok(Created::manifest(&name, put, tags))
}

/// The media type a pushed manifest is stored with: its `Content-Type`, else its own
/// `mediaType` field.
fn pushed_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    match content_type.map(essence).filter(|t| !t.is_empty()) {
        Some(t) => t.to_owned(),
        None => {
            #[derive(serde::Deserialize)]
            struct Typed {
                #[serde(rename = "mediaType")]
                media_type: Option<String>,
            }
            serde_json::from_slice::<Typed>(bytes)
                .ok()
                .and_then(|t| t.media_type)
                .unwrap_or_default()
        }
    }
}

pub(crate) async fn delete(
    s: &RegistryState,
    req: &Req,
    name: RepoName,
    reference: Reference,
) -> ApiResult<Deleted> {
    s.storage.manifest_delete(&name, &reference).await?;
    let about = match &reference {
        Reference::Tag(t) => About::deleted(&name, None, Some(t.as_str())),
        Reference::Digest(d) => About::deleted(&name, Some(d), None),
    };
    emit(s, req, Action::Delete, about);
    Ok(Deleted)
}
