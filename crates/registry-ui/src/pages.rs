//! The pages and forms: repositories, a repository's tags, an image, sign-in and deletion.
//! Every handler first learns who is visiting ([`Ui::visitor`]), then checks what the API
//! would check for the same request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use maud::{html, Markup, DOCTYPE};
use registry_auth::{Action, Identity, Refusal};
use registry_core::{
    BlobStore, CatalogStore, Digest, Error, ManifestStore, Reference, ReferrerStore, RepoName, Tag,
};
use serde_json::Value;

use crate::session::SESSION_COOKIE;
use crate::{page, Ui, Visitor};

/// Repositories per page of the list.
const REPOSITORIES_PER_PAGE: usize = 50;
/// Tags per page of a repository.
const TAGS_PER_PAGE: usize = 100;
/// The largest form read.
const MAX_FORM: usize = 16 * 1024;
/// The largest image config read for the image page.
const MAX_CONFIG: u64 = 4 << 20;
/// Concurrent storage reads for one page.
const READS: usize = 16;

type Query = BTreeMap<String, String>;

fn query(request: &Request) -> Query {
    form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The page shell: header with the visitor and sign-in or sign-out, then `body`.
pub(crate) fn layout(title: &str, visitor: &Visitor, ui: &Ui, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · registry" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "registry" }
                    span.muted { (visitor.host) }
                    nav aria-label="Account" {
                        @if visitor.is_admin(&ui.admins) {
                            a href="/ui/admin" { "Administration" }
                        }
                        @if let Some(name) = visitor.name() {
                            span { "Signed in as " strong { (name) } }
                            @if visitor.session.is_some() {
                                form.inline method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(ui.sessions.csrf(&visitor.browser));
                                    button type="submit" { "Sign out" }
                                }
                            }
                        } @else if visitor.can_sign_in() {
                            a href="/ui/login" { "Sign in" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page with only a heading and a message.
pub(crate) fn message(title: &str, text: &str, visitor: &Visitor) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · registry" }
                link rel="stylesheet" href="/ui/assets/ui.css";
            }
            body {
                header.top { a.brand href="/" { "registry" } span.muted { (visitor.host) } }
                main { h1 { (title) } p { (text) } p { a href="/" { "All repositories" } } }
            }
        }
    }
}

impl Ui {
    pub(crate) fn show(&self, visitor: &Visitor, title: &str, body: Markup) -> Response {
        page(visitor, StatusCode::OK, layout(title, visitor, self, body))
    }

    pub(crate) fn fail(
        &self,
        visitor: &Visitor,
        status: StatusCode,
        title: &str,
        text: &str,
    ) -> Response {
        page(
            visitor,
            status,
            layout(
                title,
                visitor,
                self,
                html! {
                    h1 { (title) }
                    p { (text) }
                    p { a href="/" { "All repositories" } }
                },
            ),
        )
    }

    /// What a visitor who may not see something gets: anonymous visitors are sent to sign in
    /// (when they can), others are told it is not there (as if it did not exist).
    pub(crate) fn not_visible(&self, visitor: &Visitor, next: &str) -> Response {
        if visitor.identity == Identity::Anonymous && visitor.can_sign_in() {
            return see_other(&format!("/ui/login?next={}", encode(next)));
        }
        self.fail(
            visitor,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such repository or image, or you may not see it.",
        )
    }

    /// A storage failure as a page (its details go to the log, not the visitor).
    pub(crate) fn storage_failed(&self, visitor: &Visitor, e: &Error) -> Response {
        match e {
            Error::NameUnknown(_) | Error::ManifestUnknown(_) | Error::BlobUnknown(_) => self.fail(
                visitor,
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such repository or image, or you may not see it.",
            ),
            Error::Unsupported(m) | Error::Denied(m) => {
                self.fail(visitor, StatusCode::FORBIDDEN, "Not possible", m)
            }
            other => {
                tracing::warn!(error = %other, "web interface: storage failed");
                self.fail(
                    visitor,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Storage unavailable",
                    "The registry's storage did not answer; try again.",
                )
            }
        }
    }
}

/// A 303 to `location` (a path of this site).
pub(crate) fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    crate::secure(&mut response);
    response
}

pub(crate) fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `n` things, in the singular for one.
pub(crate) fn count(n: impl Into<u64>, thing: &str) -> String {
    let n = n.into();
    let plural = match thing.strip_suffix('y') {
        Some(stem) if n != 1 => format!("{stem}ies"),
        _ if n != 1 => format!("{thing}s"),
        _ => thing.to_owned(),
    };
    format!("{n} {plural}")
}

/// A size in bytes for people.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A time for people, in UTC.
pub(crate) fn when(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// The first 12 hex digits of a digest, as people compare them.
fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

// ---------------------------------------------------------------------------------------------
// Repositories

struct Listed {
    name: RepoName,
    tags: Option<usize>,
    pushed: Option<SystemTime>,
}

/// `GET /`: the repositories this visitor may pull, filtered by `q`, 50 a page after `after`.
pub(crate) async fn repositories(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !visitor.may_list() {
        return ui.not_visible(&visitor, "/");
    }
    let q = query(&request);
    let needle = q
        .get("q")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default();
    let after = q.get("after").cloned().unwrap_or_default();
    let all = match ui.own.repositories(None, None).await {
        Ok(page) => page.items,
        Err(e) => return ui.storage_failed(&visitor, &e),
    };
    let mut visible = all
        .into_iter()
        .filter(|r| needle.is_empty() || r.as_str().contains(needle.as_str()))
        .filter(|r| r.as_str() > after.as_str())
        .filter(|r| visitor.may(Action::Pull, r.as_str()));
    let shown: Vec<RepoName> = visible.by_ref().take(REPOSITORIES_PER_PAGE).collect();
    let more = visible.next().is_some();
    let listed: Vec<Listed> = futures::stream::iter(shown)
        .map(|name| {
            let ui = ui.clone();
            async move {
                let times = ui.own.tag_times(&name).await.ok();
                Listed {
                    tags: times.as_ref().map(Vec::len),
                    pushed: times.and_then(|t| t.into_iter().filter_map(|(_, w)| w).max()),
                    name,
                }
            }
        })
        .buffered(READS)
        .collect()
        .await;
    let next = more.then(|| {
        let last = listed.last().map_or("", |l| l.name.as_str());
        format!("/?q={}&after={}", encode(&needle), encode(last))
    });
    let body = html! {
        h1 { "Repositories" }
        form.search method="get" action="/" role="search" {
            label.sr-only for="q" { "Search repositories" }
            input #q type="search" name="q" value=(needle) placeholder="Search repositories";
            button type="submit" { "Search" }
        }
        @if listed.is_empty() {
            p.muted {
                @if needle.is_empty() { "No repositories yet." } @else { "No repository matches." }
            }
        } @else {
            div.scroll {
                table #repositories {
                    thead { tr {
                        th scope="col" { "Repository" }
                        th.num scope="col" { "Tags" }
                        th.wide scope="col" { "Last push" }
                    } }
                    tbody {
                        @for l in &listed {
                            tr data-name=(l.name) {
                                td { a href={ "/ui/repo/" (l.name) } { (l.name) } }
                                td.num { @if let Some(n) = l.tags { (n) } @else { "—" } }
                                td.wide { @if let Some(t) = l.pushed { (when(t)) } @else { "—" } }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            nav.pager aria-label="Pages" {
                @if !after.is_empty() { a href={ "/?q=" (encode(&needle)) } { "First page" } }
                a href=(next) rel="next" { "Next page" }
            }
        } @else if !after.is_empty() {
            nav.pager aria-label="Pages" { a href={ "/?q=" (encode(&needle)) } { "First page" } }
        }
    };
    ui.show(&visitor, "Repositories", body)
}

// ---------------------------------------------------------------------------------------------
// A repository's tags

/// What a manifest is, for tables.
struct Summary {
    kind: &'static str,
    /// An image's config and layers; `None` for an index.
    size: Option<u64>,
    platforms: Vec<String>,
    artifact_type: Option<String>,
}

fn summarize(media_type: &str, doc: &Value) -> Summary {
    let descriptors = |key: &str| doc.get(key).and_then(Value::as_array).cloned();
    let artifact_type = doc
        .get("artifactType")
        .and_then(Value::as_str)
        .or_else(|| {
            doc.pointer("/config/mediaType")
                .and_then(Value::as_str)
                .filter(|t| !t.contains("image.config") && !t.contains("container.image"))
        })
        .map(str::to_owned);
    if let Some(children) = descriptors("manifests") {
        return Summary {
            kind: "index",
            size: None,
            platforms: children.iter().filter_map(platform).collect(),
            artifact_type,
        };
    }
    let size_of = |d: &Value| d.get("size").and_then(Value::as_u64).unwrap_or(0);
    let layers = descriptors("layers").unwrap_or_default();
    let total = doc.get("config").map_or(0, size_of) + layers.iter().map(size_of).sum::<u64>();
    let kind = match (&artifact_type, media_type) {
        (Some(_), _) => "artifact",
        _ => "image",
    };
    Summary {
        kind,
        size: Some(total),
        platforms: Vec::new(),
        artifact_type,
    }
}

/// `os/architecture/variant` of an index entry.
fn platform(entry: &Value) -> Option<String> {
    let p = entry.get("platform")?;
    let part = |k: &str| p.get(k).and_then(Value::as_str);
    let mut text = format!("{}/{}", part("os")?, part("architecture")?);
    if let Some(v) = part("variant") {
        text.push('/');
        text.push_str(v);
    }
    Some(text)
}

struct TagRow {
    tag: Tag,
    pushed: Option<SystemTime>,
    digest: Option<Digest>,
    summary: Option<Summary>,
    /// When the image says it was built (its config's `created`).
    created: Option<SystemTime>,
}

/// An image config's `created`, if it is an RFC 3339 time.
fn created_of(config: &Value) -> Option<SystemTime> {
    let text = config.get("created")?.as_str()?;
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339);
    t.ok().map(SystemTime::from)
}

/// `GET /ui/repo/{name}`: the repository's tags (filtered by `q`, sorted by name or by push
/// time), with digest, kind, size, platforms and push time.
pub(crate) async fn repository(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let path = request.uri().path().to_owned();
    let Some(repo) = path
        .strip_prefix("/ui/repo/")
        .and_then(|n| n.parse::<RepoName>().ok())
    else {
        return ui.not_visible(&visitor, &path);
    };
    if !visitor.may(Action::Pull, repo.as_str()) {
        return ui.not_visible(&visitor, &path);
    }
    let q = query(&request);
    let needle = q.get("q").map(|s| s.trim().to_owned()).unwrap_or_default();
    let by_push = q.get("sort").is_some_and(|s| s == "pushed");
    let page_no: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut tags = match ui.own.tag_times(&repo).await {
        Ok(t) => t,
        Err(e) => return ui.storage_failed(&visitor, &e),
    };
    let total = tags.len();
    tags.retain(|(t, _)| needle.is_empty() || t.as_str().contains(needle.as_str()));
    if by_push {
        tags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    let matching = tags.len();
    let shown: Vec<_> = tags
        .into_iter()
        .skip(page_no * TAGS_PER_PAGE)
        .take(TAGS_PER_PAGE)
        .collect();
    let rows: Vec<TagRow> = futures::stream::iter(shown)
        .map(|(tag, pushed)| {
            let (ui, repo) = (ui.clone(), repo.clone());
            async move {
                let got = ui
                    .own
                    .manifest_get(&repo, &Reference::Tag(tag.clone()))
                    .await;
                let (digest, summary, config) = match got {
                    Ok((info, bytes)) => {
                        let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let summary = summarize(&info.media_type, &doc);
                        let config = match config_of(&doc) {
                            Some(d) if summary.kind == "image" => Some(d),
                            _ => None,
                        };
                        (Some(info.digest), Some(summary), config)
                    }
                    Err(_) => (None, None, None),
                };
                let created = match config {
                    Some(d) => read_json(&ui, &repo, &d)
                        .await
                        .as_ref()
                        .and_then(created_of),
                    None => None,
                };
                TagRow {
                    tag,
                    pushed,
                    digest,
                    summary,
                    created,
                }
            }
        })
        .buffered(READS)
        .collect()
        .await;
    let may_delete = ui.delete_enabled && visitor.may(Action::Delete, repo.as_str());
    let deleted = q.get("deleted").cloned();
    let link = |sort: &str, page: usize| {
        format!(
            "/ui/repo/{repo}?q={}&sort={sort}&page={page}",
            encode(&needle)
        )
    };
    let sort = if by_push { "pushed" } else { "name" };
    let pages = matching.div_ceil(TAGS_PER_PAGE);
    let body = html! {
        nav aria-label="Breadcrumb" { a href="/" { "Repositories" } " / " }
        h1 { (repo) }
        @if let Some(d) = deleted { p.notice role="status" { "Deleted " code { (d) } "." } }
        p.muted { (count(total as u64, "tag")) }
        div.command {
            pre #pull-repo { "docker pull " (visitor.host) "/" (repo) }
            button type="button" data-copy="pull-repo" hidden { "Copy" }
        }
        form.search method="get" action={ "/ui/repo/" (repo) } role="search" {
            label.sr-only for="tag-filter" { "Filter tags" }
            input #tag-filter type="search" name="q" value=(needle) placeholder="Filter tags" data-filter="tags";
            input type="hidden" name="sort" value=(sort);
            button type="submit" { "Filter" }
        }
        p {
            "Sort by: "
            @if by_push { a href=(link("name", 0)) { "name" } " · " strong { "push time" } }
            @else { strong { "name" } " · " a href=(link("pushed", 0)) { "push time" } }
        }
        div.scroll {
            table #tags {
                thead { tr {
                    th scope="col" { "Tag" }
                    th scope="col" { "Digest" }
                    th.wide scope="col" { "Type" }
                    th.num scope="col" { "Size" }
                    th.wide scope="col" { "Platforms" }
                    th.wide scope="col" { "Created" }
                    th.wide scope="col" { "Pushed" }
                    @if may_delete { th scope="col" { span.sr-only { "Actions" } } }
                } }
                tbody {
                    @for row in &rows {
                        tr data-name=(row.tag) {
                            td { a href={ "/ui/image/" (repo) ":" (row.tag) } { (row.tag) } }
                            td.mono {
                                @if let Some(d) = &row.digest {
                                    a href={ "/ui/image/" (repo) "@" (d) } title=(d) { (short(d.hex())) }
                                } @else { "—" }
                            }
                            td.wide { @if let Some(s) = &row.summary { (s.kind) } }
                            td.num { @if let Some(n) = row.summary.as_ref().and_then(|s| s.size) { (size(n)) } @else { "—" } }
                            td.wide { @if let Some(s) = &row.summary { (s.platforms.join(", ")) } }
                            td.wide { @if let Some(t) = row.created { (when(t)) } @else { "—" } }
                            td.wide { @if let Some(t) = row.pushed { (when(t)) } @else { "—" } }
                            @if may_delete {
                                td { a href={ "/ui/delete?repo=" (encode(repo.as_str())) "&reference=" (encode(row.tag.as_str())) } aria-label={ "Delete tag " (row.tag) } { "Delete" } }
                            }
                        }
                    }
                }
            }
        }
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page_no > 0 { a href=(link(sort, page_no - 1)) rel="prev" { "Previous page" } }
                span.muted { "Page " (page_no + 1) " of " (pages) }
                @if page_no + 1 < pages { a href=(link(sort, page_no + 1)) rel="next" { "Next page" } }
            }
        }
    };
    ui.show(&visitor, repo.as_str(), body)
}

// ---------------------------------------------------------------------------------------------
// An image

/// `<repo>@<digest>` or `<repo>:<tag>`.
fn parse_reference(text: &str) -> Option<(RepoName, Reference)> {
    let (repo, reference) = match text.split_once('@') {
        Some((repo, digest)) => (repo, Reference::Digest(digest.parse().ok()?)),
        None => {
            let (repo, tag) = text.rsplit_once(':')?;
            (repo, Reference::Tag(tag.parse().ok()?))
        }
    };
    Some((repo.parse().ok()?, reference))
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => Some(other.to_string()),
    }
}

fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The digest of a manifest's config.
fn config_of(doc: &Value) -> Option<Digest> {
    doc.pointer("/config/digest")?.as_str()?.parse().ok()
}

/// Reads a blob of at most [`MAX_CONFIG`] bytes as JSON.
async fn read_json(ui: &Ui, repo: &RepoName, digest: &Digest) -> Option<Value> {
    let read = ui.own.blob_read(repo, digest, None).await.ok()?;
    if read.size > MAX_CONFIG {
        return None;
    }
    let chunks: Vec<_> = read.stream.try_collect().await.ok()?;
    serde_json::from_slice(&chunks.concat()).ok()
}

/// `GET /ui/image/{repo}:{tag}` or `…@{digest}`: what an image is made of.
pub(crate) async fn image(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let path = request.uri().path().to_owned();
    let Some((repo, reference)) = path.strip_prefix("/ui/image/").and_then(parse_reference) else {
        return ui.not_visible(&visitor, &path);
    };
    if !visitor.may(Action::Pull, repo.as_str()) {
        return ui.not_visible(&visitor, &path);
    }
    let (info, bytes) = match ui.own.manifest_get(&repo, &reference).await {
        Ok(got) => got,
        Err(e) => return ui.storage_failed(&visitor, &e),
    };
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let summary = summarize(&info.media_type, &doc);
    let config_digest = config_of(&doc);
    let config = match (&config_digest, summary.kind) {
        (Some(d), "image") => read_json(&ui, &repo, d).await,
        _ => None,
    };
    let referrers = ui
        .own
        .referrers(&repo, &info.digest)
        .await
        .unwrap_or_default();
    let mut by_type: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for r in referrers {
        let t = r
            .artifact_type
            .clone()
            .unwrap_or_else(|| r.media_type.clone());
        by_type.entry(t).or_default().push(r);
    }
    let tag = match &reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    let title = match &tag {
        Some(t) => format!("{repo}:{t}"),
        None => format!("{repo}@{}", short(info.digest.hex())),
    };
    let may_delete = visitor.may(Action::Delete, repo.as_str()) && ui.delete_enabled;
    let layers = doc
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let children = doc
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let annotations = string_map(doc.get("annotations"));
    let subject = doc.pointer("/subject/digest").and_then(Value::as_str);
    let c = config.as_ref().and_then(|c| c.get("config"));
    let labels = string_map(c.and_then(|c| c.get("Labels")));
    let env: Vec<String> = c
        .and_then(|c| c.get("Env"))
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let history: Vec<(String, String)> = config
        .as_ref()
        .and_then(|c| c.get("history"))
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .map(|step| {
                    (
                        text_of(step.get("created")).unwrap_or_default(),
                        text_of(step.get("created_by")).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body = html! {
        nav aria-label="Breadcrumb" {
            a href="/" { "Repositories" } " / " a href={ "/ui/repo/" (repo) } { (repo) } " / "
        }
        h1 { (title) }
        dl.facts {
            dt { "Digest" } dd.mono { (info.digest) }
            dt { "Media type" } dd.mono { (info.media_type) }
            dt { "Kind" } dd { (summary.kind) }
            @if let Some(t) = &summary.artifact_type { dt { "Artifact type" } dd.mono { (t) } }
            @if let Some(n) = summary.size { dt { "Size" } dd { (size(n)) " (config and layers, compressed)" } }
            @if let Some(s) = subject {
                dt { "Refers to" } dd.mono { a href={ "/ui/image/" (repo) "@" (s) } { (s) } }
            }
        }
        h2 { "Pull" }
        @if let Some(t) = &tag {
            div.command {
                pre #pull-tag { "docker pull " (visitor.host) "/" (repo) ":" (t) }
                button type="button" data-copy="pull-tag" hidden { "Copy" }
            }
        }
        div.command {
            pre #pull-digest { "docker pull " (visitor.host) "/" (repo) "@" (info.digest) }
            button type="button" data-copy="pull-digest" hidden { "Copy" }
        }
        @if !children.is_empty() {
            h2 { "Platforms" }
            div.scroll { table #platforms {
                thead { tr { th scope="col" { "Platform" } th scope="col" { "Digest" } th.num scope="col" { "Manifest size" } } }
                tbody {
                    @for child in &children {
                        @let digest = child.get("digest").and_then(Value::as_str).unwrap_or("");
                        tr {
                            td { (platform(child).unwrap_or_else(|| "—".to_owned())) }
                            td.mono { a href={ "/ui/image/" (repo) "@" (digest) } title=(digest) { (short(digest)) } }
                            td.num { (size(child.get("size").and_then(Value::as_u64).unwrap_or(0))) }
                        }
                    }
                }
            } }
        }
        @if let Some(cfg) = &config {
            h2 { "Configuration" }
            dl.facts {
                @if let Some(t) = text_of(cfg.get("created")) { dt { "Created" } dd { (t) } }
                @if let (Some(os), Some(arch)) = (text_of(cfg.get("os")), text_of(cfg.get("architecture"))) {
                    dt { "Platform" } dd { (os) "/" (arch) @if let Some(v) = text_of(cfg.get("variant")) { "/" (v) } }
                }
                @if let Some(e) = text_of(c.and_then(|c| c.get("Entrypoint"))) { dt { "Entrypoint" } dd.mono { (e) } }
                @if let Some(e) = text_of(c.and_then(|c| c.get("Cmd"))) { dt { "Command" } dd.mono { (e) } }
                @if let Some(e) = text_of(c.and_then(|c| c.get("WorkingDir"))).filter(|w| !w.is_empty()) { dt { "Working directory" } dd.mono { (e) } }
                @if let Some(e) = text_of(c.and_then(|c| c.get("User"))).filter(|u| !u.is_empty()) { dt { "User" } dd.mono { (e) } }
                @if let Some(p) = c.and_then(|c| c.get("ExposedPorts")).and_then(Value::as_object) {
                    dt { "Ports" } dd.mono { (p.keys().cloned().collect::<Vec<_>>().join(", ")) }
                }
            }
            @if !env.is_empty() {
                h2 { "Environment" }
                pre #env { @for e in &env { (e) "\n" } }
            }
            @if !labels.is_empty() {
                h2 { "Labels" }
                div.scroll { table #labels {
                    thead { tr { th scope="col" { "Label" } th scope="col" { "Value" } } }
                    tbody { @for (k, v) in &labels { tr { td.mono { (k) } td { (v) } } } }
                } }
            }
        }
        @if !layers.is_empty() {
            h2 { "Layers" }
            div.scroll { table #layers {
                thead { tr { th.num scope="col" { "#" } th scope="col" { "Digest" } th.wide scope="col" { "Media type" } th.num scope="col" { "Size" } } }
                tbody {
                    @for (i, layer) in layers.iter().enumerate() {
                        @let digest = layer.get("digest").and_then(Value::as_str).unwrap_or("");
                        tr {
                            td.num { (i + 1) }
                            td.mono title=(digest) { (short(digest)) }
                            td.wide.mono { (layer.get("mediaType").and_then(Value::as_str).unwrap_or("")) }
                            td.num { (size(layer.get("size").and_then(Value::as_u64).unwrap_or(0))) }
                        }
                    }
                }
            } }
        }
        @if !history.is_empty() {
            h2 { "History" }
            div.scroll { table #history {
                thead { tr { th scope="col" { "Created" } th scope="col" { "Step" } } }
                tbody { @for (when, step) in &history { tr { td { (when) } td.mono { (step) } } } }
            } }
        }
        @if !annotations.is_empty() {
            h2 { "Annotations" }
            div.scroll { table #annotations {
                thead { tr { th scope="col" { "Annotation" } th scope="col" { "Value" } } }
                tbody { @for (k, v) in &annotations { tr { td.mono { (k) } td { (v) } } } }
            } }
        }
        h2 { "Referrers" }
        @if by_type.is_empty() {
            p.muted { "No signatures, SBOMs or attestations refer to this manifest." }
        } @else {
            @for (kind, list) in &by_type {
                h3.mono { (kind) }
                ul {
                    @for r in list {
                        li.mono { a href={ "/ui/image/" (repo) "@" (r.digest) } { (r.digest) } " (" (size(r.size)) ")" }
                    }
                }
            }
        }
        @if may_delete {
            h2 { "Delete" }
            p {
                @if let Some(t) = &tag {
                    a href={ "/ui/delete?repo=" (encode(repo.as_str())) "&reference=" (encode(t.as_str())) } { "Delete tag " (t) } " · "
                }
                a href={ "/ui/delete?repo=" (encode(repo.as_str())) "&reference=" (encode(&info.digest.to_string())) } { "Delete this manifest and its tags" }
            }
        }
    };
    ui.show(&visitor, &title, body)
}

// ---------------------------------------------------------------------------------------------
// Deletion

/// The repository and reference a deletion names, if the visitor may delete there.
fn deletion_target(
    ui: &Ui,
    visitor: &Visitor,
    fields: &Query,
) -> Result<(RepoName, Reference), Box<Response>> {
    let target = fields
        .get("repo")
        .and_then(|r| r.parse::<RepoName>().ok())
        .zip(
            fields
                .get("reference")
                .and_then(|r| r.parse::<Reference>().ok()),
        );
    let Some((repo, reference)) = target else {
        return Err(Box::new(ui.fail(
            visitor,
            StatusCode::BAD_REQUEST,
            "Not a deletion",
            "The form names no repository and reference.",
        )));
    };
    if !visitor.may(Action::Pull, repo.as_str()) {
        return Err(Box::new(
            ui.not_visible(visitor, &format!("/ui/repo/{repo}")),
        ));
    }
    if !ui.delete_enabled {
        return Err(Box::new(ui.fail(
            visitor,
            StatusCode::METHOD_NOT_ALLOWED,
            "Deletion is off",
            "This registry does not delete manifests or tags.",
        )));
    }
    if !visitor.may(Action::Delete, repo.as_str()) {
        return Err(Box::new(ui.fail(
            visitor,
            StatusCode::FORBIDDEN,
            "Not allowed",
            "You may not delete in this repository.",
        )));
    }
    Ok((repo, reference))
}

/// `GET /ui/delete?repo=&reference=`: asks to confirm.
pub(crate) async fn delete_form(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (repo, reference) = match deletion_target(&ui, &visitor, &query(&request)) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let what = match &reference {
        Reference::Tag(t) => html! {
            "Delete the tag " code { (t) } " of " code { (repo) } "? The manifest it points at stays, reachable by its digest and any other tag."
        },
        Reference::Digest(d) => html! {
            "Delete the manifest " code { (d) } " from " code { (repo) } ", with every tag pointing at it? Pulls of it will fail; its layers go at the next garbage collection if nothing else uses them."
        },
    };
    let body = html! {
        h1 { "Delete?" }
        p { (what) }
        form method="post" action="/ui/delete" {
            input type="hidden" name="csrf" value=(ui.sessions.csrf(&visitor.browser));
            input type="hidden" name="repo" value=(repo);
            input type="hidden" name="reference" value=(reference);
            button.danger type="submit" { "Delete" }
            " "
            a href={ "/ui/repo/" (repo) } { "Cancel" }
        }
    };
    ui.show(&visitor, "Delete", body)
}

/// The fields of a form this site sent to `visitor` (at most [`MAX_FORM`] bytes): refused
/// without its CSRF token or from another origin.
pub(crate) async fn posted(
    ui: &Ui,
    visitor: &Visitor,
    request: Request,
) -> Result<Query, Response> {
    let headers = request.headers().clone();
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_FORM).await else {
        return Err(ui.fail(
            visitor,
            StatusCode::BAD_REQUEST,
            "Not a form",
            "The request is not a form this page sends.",
        ));
    };
    let fields: Query = form_urlencoded::parse(&body).into_owned().collect();
    if !ui.form_is_ours(visitor, &headers, fields.get("csrf").map(String::as_str)) {
        return Err(csrf_refused(ui, visitor));
    }
    Ok(fields)
}

/// `POST /ui/delete`: deletes, then shows the repository.
pub(crate) async fn delete(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let fields = match posted(&ui, &visitor, request).await {
        Ok(fields) => fields,
        Err(r) => return r,
    };
    let (repo, reference) = match deletion_target(&ui, &visitor, &fields) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match ui.own.manifest_delete(&repo, &reference).await {
        Ok(()) => {
            tracing::info!(repo = %repo, reference = %reference, who = %visitor.identity, "deleted in the web interface");
            see_other(&format!(
                "/ui/repo/{repo}?deleted={}",
                encode(&reference.to_string())
            ))
        }
        Err(e) => ui.storage_failed(&visitor, &e),
    }
}

fn csrf_refused(ui: &Ui, visitor: &Visitor) -> Response {
    ui.fail(
        visitor,
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form did not come from this page (its security token is missing or wrong). Go back, reload the page and try again.",
    )
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

/// Where to go after signing in: a path of this site, never another site.
fn next_of(fields: &Query) -> String {
    fields
        .get("next")
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .cloned()
        .unwrap_or_else(|| "/".to_owned())
}

fn login_page(ui: &Ui, visitor: &Visitor, next: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        visitor,
        ui,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(ui.sessions.csrf(&visitor.browser));
                input type="hidden" name="next" value=(next);
                label for="user" { "User name" }
                input #user type="text" name="user" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p.muted { "The name and password you use with " code { "docker login" } ", or a scoped token's name and secret." }
        @if ui.oidc {
            p { a href="/auth/login?to=ui" { "Sign in with your organization's account (OpenID Connect)" } }
        }
        },
    )
}

/// `GET /ui/login`: the sign-in form.
pub(crate) async fn login_form(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !visitor.can_sign_in() {
        return ui.fail(
            &visitor,
            StatusCode::NOT_FOUND,
            "No sign-in",
            "This registry takes no passwords.",
        );
    }
    let next = next_of(&query(&request));
    page(
        &visitor,
        StatusCode::OK,
        login_page(&ui, &visitor, &next, None),
    )
}

/// `POST /ui/login`: checks the name and password as HTTP Basic would (the same brake), then
/// starts a session.
pub(crate) async fn login(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (Some(guard), Some(address)) = (visitor.guard.clone(), visitor.address) else {
        return ui.fail(
            &visitor,
            StatusCode::NOT_FOUND,
            "No sign-in",
            "This registry takes no passwords.",
        );
    };
    let fields = match posted(&ui, &visitor, request).await {
        Ok(fields) => fields,
        Err(r) => return r,
    };
    let next = next_of(&fields);
    let user = fields.get("user").map(String::as_str).unwrap_or("");
    let password = fields.get("password").map(String::as_str).unwrap_or("");
    let failed = |status: StatusCode, why: &str| {
        page(
            &visitor,
            status,
            login_page(&ui, &visitor, &next, Some(why)),
        )
    };
    if user.is_empty() || password.is_empty() {
        return failed(StatusCode::BAD_REQUEST, "Enter a name and a password.");
    }
    match guard.login(address, user, password).await {
        Ok(identity) => {
            let (_, value) = ui.sessions.seal(identity.login_name(), None);
            tracing::info!(who = %identity, client = %address, "signed in to the web interface");
            let mut response = see_other(&next);
            let cookie = crate::session_cookie(&value, ui.sessions.lifetime(), visitor.tls);
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
            response
        }
        Err(Refusal::TooManyAttempts { retry_after }) => {
            let mut response = failed(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins; wait a little and try again.",
            );
            let secs = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        Err(Refusal::Denied(m)) => failed(StatusCode::FORBIDDEN, &m),
        Err(Refusal::Unauthenticated { .. }) => {
            failed(StatusCode::UNAUTHORIZED, "Wrong name or password.")
        }
    }
}

/// `POST /ui/logout`: ends the session (on this node; see [`crate::session`]).
pub(crate) async fn logout(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.visitor(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = posted(&ui, &visitor, request).await {
        return r;
    }
    if let Some(s) = &visitor.session {
        ui.sessions.revoke(s);
    }
    let mut response = see_other("/");
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        visitor.secure_suffix()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_redirects() {
        let (r, t) = parse_reference("a/b:v1").unwrap();
        assert_eq!((r.as_str(), t.to_string().as_str()), ("a/b", "v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let (r, t) = parse_reference(&format!("a/b@{d}")).unwrap();
        assert_eq!((r.as_str(), t.to_string()), ("a/b", d));
        assert!(parse_reference("a/b").is_none());
        assert!(parse_reference("A/b:v1").is_none());
        let next = |n: &str| next_of(&[("next".to_owned(), n.to_owned())].into());
        assert_eq!(next("/ui/repo/a"), "/ui/repo/a");
        assert_eq!(next("//evil.example/"), "/");
        assert_eq!(next("https://evil.example/"), "/");
        assert_eq!(next("/\\evil.example"), "/");
    }

    #[test]
    fn summaries() {
        let image = serde_json::json!({
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 10},
            "layers": [{"size": 100}, {"size": 1000}],
        });
        let s = summarize("application/vnd.oci.image.manifest.v1+json", &image);
        assert_eq!((s.kind, s.size), ("image", Some(1110)));
        let index = serde_json::json!({"manifests": [
            {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let s = summarize("application/vnd.oci.image.index.v1+json", &index);
        assert_eq!(s.platforms, ["linux/arm64/v8", "linux/amd64"]);
        let artifact = serde_json::json!({"artifactType": "application/spdx+json", "layers": []});
        assert_eq!(summarize("", &artifact).kind, "artifact");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12), "12 B");
        assert_eq!(count(1u64, "blob"), "1 blob");
        assert_eq!(count(0u64, "blob link"), "0 blob links");
        assert_eq!(count(2u64, "repository"), "2 repositories");
    }
}
