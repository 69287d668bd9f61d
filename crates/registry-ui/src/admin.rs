//! The administrators' page: storage usage per repository and the last garbage collection and
//! fsck (from the reports they store, see `registry_core::GcReport`), and a button that starts a
//! collection. Only for the instance's administrators (`[ui] admins`; everyone without a guard).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::Response;
use maud::{html, Markup};
use registry_core::{FsckReport, GcReport};

use crate::pages::{count, posted, see_other, size, when};
use crate::{Ui, Visitor};

/// Repositories shown in the usage table (the largest).
const USAGE_ROWS: usize = 200;

fn at(unix: u64) -> String {
    when(UNIX_EPOCH + Duration::from_secs(unix))
}

impl Ui {
    /// The visitor, if they administer the instance; else the page they get instead.
    fn admin(
        &self,
        request: &Request,
    ) -> impl std::future::Future<Output = Result<Visitor, Response>> + Send + '_ {
        let visitor = self.visitor(request);
        async move {
            let visitor = visitor.await?;
            if visitor.is_admin(&self.admins) {
                Ok(visitor)
            } else {
                Err(self.not_visible(&visitor, "/ui/admin"))
            }
        }
    }
}

fn gc_section(last: Option<&GcReport>, running: bool, csrf: &str, started: bool) -> Markup {
    html! {
        h2 { "Garbage collection" }
        @if started { p.notice role="status" { "A collection started; reload this page to see when it ends." } }
        @if running {
            p { strong { "A collection is running." } " Writers keep working; what it deletes is reported here when it ends." }
        }
        @match last {
            None => p.muted { "No collection has run yet." },
            Some(r) => {
                dl.facts {
                    dt { "Last run" } dd { (at(r.started)) ", " (r.finished.saturating_sub(r.started)) " s" }
                    @if let Some(e) = &r.error { dt { "Failed" } dd.error { (e) } }
                    dt { "Deleted" } dd {
                        (count(r.summary.manifests, "manifest")) ", " (count(r.summary.links, "blob link")) ", "
                        (count(r.summary.blobs, "blob")) " (" (size(r.summary.bytes)) "), "
                        (count(r.summary.uploads, "idle upload"))
                    }
                    @if r.summary.evicted > 0 { dt { "Caches evicted" } dd { (r.summary.evicted) } }
                    @if r.summary.pinned > 0 { dt { "Kept for writers" } dd { (r.summary.pinned) } }
                }
            }
        }
        form method="post" action="/ui/admin/gc" {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" disabled[running] { "Start a collection" }
        }
    }
}

fn fsck_section(last: Option<&FsckReport>) -> Markup {
    html! {
        h2 { "Consistency check (fsck)" }
        @match last {
            None => p.muted { "No check has run yet: " code { "registry fsck" } " checks every blob, link, manifest and tag." },
            Some(r) => {
                dl.facts {
                    dt { "Last run" } dd { (at(r.started)) ", " (r.finished.saturating_sub(r.started)) " s" @if r.repair { " (repairing)" } }
                    @if let Some(e) = &r.error { dt { "Failed" } dd.error { (e) } }
                    dt { "Checked" } dd {
                        (count(r.summary.blobs, "blob")) " (" (size(r.summary.blob_bytes)) "), " (count(r.summary.links, "link")) ", "
                        (count(r.summary.manifests, "manifest")) ", " (count(r.summary.tags, "tag"))
                    }
                    dt { "Problems" } dd { (r.summary.problems) @if r.summary.repaired > 0 { ", " (r.summary.repaired) " repaired" } }
                }
                @if !r.problems.is_empty() {
                    ul #problems { @for p in &r.problems { li.mono { (p) } } }
                }
            }
        }
    }
}

fn usage_section(last: Option<&GcReport>) -> Markup {
    let usage = last.map(|r| r.usage.as_slice()).unwrap_or_default();
    let total: u64 = usage.iter().map(|u| u.bytes).sum();
    html! {
        h2 { "Storage by repository" }
        @if usage.is_empty() {
            p.muted { "Measured by each garbage collection; none has finished yet." }
        } @else {
            p.muted {
                "As the collection of " (last.map(|r| at(r.started)).unwrap_or_default())
                " measured: blobs the kept manifests reference, each once per repository (a layer two repositories share counts in both); "
                (size(total)) " in all."
            }
            div.scroll { table #usage {
                thead { tr {
                    th scope="col" { "Repository" }
                    th.num scope="col" { "Size" }
                    th.num.wide scope="col" { "Blobs" }
                    th.num.wide scope="col" { "Manifests" }
                } }
                tbody {
                    @for u in usage.iter().take(USAGE_ROWS) {
                        tr {
                            td { a href={ "/ui/repo/" (u.repository) } { (u.repository) } }
                            td.num { (size(u.bytes)) }
                            td.num.wide { (u.blobs) }
                            td.num.wide { (u.manifests) }
                        }
                    }
                }
            } }
            @if usage.len() > USAGE_ROWS { p.muted { "The " (USAGE_ROWS) " largest of " (count(usage.len() as u64, "repository")) "." } }
        }
    }
}

/// `GET /ui/admin`.
pub(crate) async fn page(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.admin(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let started = request.uri().query() == Some("started=1");
    let (gc, fsck, running) =
        match tokio::try_join!(ui.own.last_gc(), ui.own.last_fsck(), ui.own.gc_running()) {
            Ok(found) => found,
            Err(e) => return ui.storage_failed(&visitor, &e),
        };
    let running = running || ui.collecting.load(Ordering::Acquire);
    let csrf = ui.sessions.csrf(&visitor.browser);
    let body = html! {
        h1 { "Administration" }
        (gc_section(gc.as_ref(), running, &csrf, started))
        (fsck_section(fsck.as_ref()))
        (usage_section(gc.as_ref()))
    };
    ui.show(&visitor, "Administration", body)
}

/// `POST /ui/admin/gc`: starts a collection with the instance's settings, in the background.
pub(crate) async fn collect(State(ui): State<Arc<Ui>>, request: Request) -> Response {
    let visitor = match ui.admin(&request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = posted(&ui, &visitor, request).await {
        return r;
    }
    if ui.collecting.swap(true, Ordering::AcqRel) {
        return see_other("/ui/admin");
    }
    tracing::info!(who = %visitor.identity, "garbage collection started from the web interface");
    let (own, options, collecting) = (ui.own.clone(), ui.gc.clone(), ui.collecting.clone());
    let who = visitor.identity.to_string();
    tokio::spawn(async move {
        match own.gc(&options, |_| {}).await {
            Ok(s) => {
                tracing::info!(
                    manifests = s.manifests,
                    blobs = s.blobs,
                    bytes = s.bytes,
                    "garbage collection finished"
                );
                tracing::info!(target: registry_http::audit::TARGET, action = "gc", result = "ok", who, manifests = s.manifests, blobs = s.blobs, bytes = s.bytes, "gc from the web interface");
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection failed");
                tracing::info!(target: registry_http::audit::TARGET, action = "gc", result = "failed", who, error = %e, "gc from the web interface");
            }
        }
        collecting.store(false, Ordering::Release);
    });
    see_other("/ui/admin?started=1")
}
