//! The catalog (from per-repository markers, so listing never walks blob or tag keys) and the
//! backend health probe.

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::ObjectRegistry;
use crate::error::Result;
use crate::layout;
use crate::names::RepoName;
use crate::storage::{paginate, CatalogStore, Page};

#[async_trait]
impl CatalogStore for ObjectRegistry {
    async fn repositories(&self, last: Option<&str>, n: Option<usize>) -> Result<Page<RepoName>> {
        let root = layout::catalog_root();
        let metas: Vec<_> = self.store.list(Some(&root)).try_collect().await?;
        let mut names: Vec<RepoName> = metas
            .iter()
            .filter(|m| m.location.filename() == Some(layout::CATALOG_MARKER))
            .filter_map(|m| {
                let parts: Vec<_> = m.location.parts().collect();
                let name: Vec<&str> = parts[1..parts.len() - 1]
                    .iter()
                    .map(|p| p.as_ref())
                    .collect();
                name.join("/").parse().ok()
            })
            .collect();
        names.sort();
        Ok(paginate(&names, last, n, RepoName::as_str))
    }

    async fn health(&self) -> Result<()> {
        match self.store.head(&layout::health_probe()).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
