//! The catalog (from per-repository markers, so listing never walks blob or tag keys; cached
//! per node and validated by one small read, so 10 000 repositories on S3 are not listed per
//! request) and the backend health probe.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::ObjectRegistry;
use crate::error::Result;
use crate::layout;
use crate::names::RepoName;
use crate::storage::{paginate, CatalogStore, Page};

impl ObjectRegistry {
    /// Records that a repository was created.
    /// Returns the new generation.
    pub(super) async fn catalog_changed(&self) -> Result<Bytes> {
        let generation = Bytes::from(uuid::Uuid::new_v4().simple().to_string());
        self.put_generation(&layout::catalog_generation(), generation.clone())
            .await?;
        Ok(generation)
    }

    /// Every repository, sorted. Listed from the markers only when the catalog generation
    /// changed since the last listing (it is read before listing, so a cached list is never
    /// older than its generation); otherwise one small read.
    pub(super) async fn all_repositories(&self) -> Result<Arc<Vec<RepoName>>> {
        let generation = match self
            .get_small_from(self.volatile(), &layout::catalog_generation())
            .await?
        {
            Some(g) => g,
            // Storage written before generations existed: start one.
            None => self.catalog_changed().await?,
        };
        if let Some((cached, list)) = &*self.catalog.lock().expect("not poisoned") {
            if *cached == generation {
                return Ok(list.clone());
            }
        }
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
        let names = Arc::new(names);
        *self.catalog.lock().expect("not poisoned") = Some((generation, names.clone()));
        Ok(names)
    }
}

#[async_trait]
impl CatalogStore for ObjectRegistry {
    async fn repositories(&self, last: Option<&str>, n: Option<usize>) -> Result<Page<RepoName>> {
        let names = self.all_repositories().await?;
        Ok(paginate(&names, last, n, RepoName::as_str))
    }

    async fn health(&self) -> Result<()> {
        match self.store.head(&layout::health_probe()).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
