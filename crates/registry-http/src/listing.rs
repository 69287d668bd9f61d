//! Paginated listings: tags, the catalog, and referrers.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use registry_core::manifest::OCI_INDEX;
use registry_core::{Digest, Page, RepoName};
use serde_json::json;

use crate::{respond, Access, ApiError, ApiResult, ErrorCode, RegistryState, Req};

/// `n` and `last` of a paginated request; `n` is capped at the configured page size.
fn page_params(s: &RegistryState, req: &Req) -> ApiResult<(Option<usize>, Option<String>)> {
    let n = match req.query("n") {
        None => None,
        Some(v) => {
            let n: usize = v.parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::PaginationNumberInvalid,
                    "n must be a non-negative integer",
                )
            })?;
            Some(n.min(s.config.max_page_size))
        }
    };
    Ok((n, req.query("last").filter(|l| !l.is_empty())))
}

fn paged<T: ToString>(
    path: &str,
    n: Option<usize>,
    page: &Page<T>,
    body: serde_json::Value,
) -> Response {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let (true, Some(n), Some(last)) = (page.more, n, page.items.last()) {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", &last.to_string())
            .finish();
        headers.push(("link", format!("<{path}?{query}>; rel=\"next\"")));
    }
    respond(StatusCode::OK, headers, Body::from(body.to_string()))
}

pub(crate) async fn tags(s: &RegistryState, req: &Req, name: RepoName) -> ApiResult<Response> {
    let (n, last) = page_params(s, req)?;
    let page = s.storage.tags(&name, last.as_deref(), n).await?;
    let tags: Vec<&str> = page.items.iter().map(|t| t.as_str()).collect();
    let body = json!({ "name": name.as_str(), "tags": tags });
    Ok(paged(&format!("/v2/{name}/tags/list"), n, &page, body))
}

pub(crate) async fn catalog(s: &RegistryState, req: &Req) -> ApiResult<Response> {
    let (n, last) = page_params(s, req)?;
    let page = match req.caller.as_ref().filter(|c| c.is_restricted()) {
        None => s.storage.repositories(last.as_deref(), n).await?,
        Some(caller) => {
            let want = n.unwrap_or(s.config.max_page_size);
            visible_repositories(s, last, want, |r| caller.may(Access::Pull, r)).await?
        }
    };
    let repos: Vec<&str> = page.items.iter().map(|r| r.as_str()).collect();
    Ok(paged(
        "/v2/_catalog",
        n,
        &page,
        json!({ "repositories": repos }),
    ))
}

/// Up to `want` repositories after `last` that `visible` accepts, reading the catalog page by
/// page until enough are found or it ends.
async fn visible_repositories(
    s: &RegistryState,
    mut last: Option<String>,
    want: usize,
    visible: impl Fn(&str) -> bool,
) -> ApiResult<Page<RepoName>> {
    let mut items = Vec::new();
    loop {
        let page = s.storage.repositories(last.as_deref(), Some(want)).await?;
        let mut rest = page.items.into_iter();
        for repo in rest.by_ref() {
            last = Some(repo.to_string());
            if visible(repo.as_str()) {
                items.push(repo);
                if items.len() == want {
                    break;
                }
            }
        }
        if items.len() == want || !page.more {
            let more = rest.len() > 0 || page.more;
            return Ok(Page { items, more });
        }
    }
}

pub(crate) async fn referrers(
    s: &RegistryState,
    req: &Req,
    name: RepoName,
    subject: Digest,
) -> ApiResult<Response> {
    let mut found = s.storage.referrers(&name, &subject).await?;
    let mut headers = vec![("content-type", OCI_INDEX.to_owned())];
    if let Some(filter) = req.query("artifactType") {
        found.retain(|d| d.artifact_type.as_deref() == Some(filter.as_str()));
        headers.push(("oci-filters-applied", "artifactType".to_owned()));
    }
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found });
    Ok(respond(
        StatusCode::OK,
        headers,
        Body::from(body.to_string()),
    ))
}
