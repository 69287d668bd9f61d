//! Paginated listings: tags, the catalog, and referrers.

use registry_core::manifest::OCI_INDEX;
use registry_core::{Digest, Page, RepoName};
use serde_json::json;

use crate::responses::JsonPage;
use crate::{Access, ApiError, ApiResult, ErrorCode, RegistryState, Req};

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

/// A page of a listing, with a `Link` to the next page when there is one.
fn paged<T: ToString>(path: &str, n: Option<usize>, page: &Page<T>, body: Vec<u8>) -> JsonPage {
    let next = match (page.more, n, page.items.last()) {
        (true, Some(n), Some(last)) => {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", &last.to_string())
                .finish();
            Some(format!("{path}?{query}"))
        }
        _ => None,
    };
    JsonPage {
        content_type: "application/json",
        body,
        next,
        filters: None,
    }
}

pub(crate) async fn tags(s: &RegistryState, req: &Req, name: RepoName) -> ApiResult<JsonPage> {
    let (n, last) = page_params(s, req)?;
    let page = s.storage.tags(&name, last.as_deref(), n).await?;
    // Rendered straight from the names: no JSON value tree of a thousand strings.
    #[derive(serde::Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: Vec<&'a str>,
    }
    let body = serde_json::to_vec(&TagList {
        name: name.as_str(),
        tags: page.items.iter().map(|t| t.as_str()).collect(),
    })
    .expect("strings serialize");
    Ok(paged(&format!("/v2/{name}/tags/list"), n, &page, body))
}

pub(crate) async fn catalog(s: &RegistryState, req: &Req) -> ApiResult<JsonPage> {
    let (n, last) = page_params(s, req)?;
    let page = match req.caller.as_ref().filter(|c| c.is_restricted()) {
        None => s.storage.repositories(last.as_deref(), n).await?,
        Some(caller) => {
            let want = n.unwrap_or(s.config.max_page_size);
            visible_repositories(s, last, want, |r| caller.may(Access::Pull, r)).await?
        }
    };
    #[derive(serde::Serialize)]
    struct Catalog<'a> {
        repositories: Vec<&'a str>,
    }
    let body = serde_json::to_vec(&Catalog {
        repositories: page.items.iter().map(|r| r.as_str()).collect(),
    })
    .expect("strings serialize");
    Ok(paged("/v2/_catalog", n, &page, body))
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
) -> ApiResult<JsonPage> {
    let mut found = s.storage.referrers(&name, &subject).await?;
    let filter = req.query("artifactType");
    if let Some(filter) = &filter {
        found.retain(|d| d.artifact_type.as_deref() == Some(filter.as_str()));
    }
    Ok(JsonPage {
        content_type: OCI_INDEX,
        body: serde_json::to_vec(
            &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found }),
        )
        .expect("descriptors serialize"),
        next: None,
        filters: filter.map(|_| "artifactType"),
    })
}
