//! `registry-core`: the types, manifest rules and storage of an OCI distribution registry,
//! independent of HTTP.
//!
//! - [`names`] and [`digest`]: validated `RepoName`, `Tag`, `Reference`, `Digest`.
//! - [`manifest`]: parsing and validation of OCI and Docker schema 2 manifests.
//! - [`storage`]: the traits the HTTP layer uses; [`ObjectRegistry`] implements them over any
//!   [`object_store::ObjectStore`] (local filesystem, S3, memory).
//! - [`layout`]: the storage key layout.
//!
//! ```
//! use std::sync::Arc;
//! use registry_core::{ObjectRegistry, StoreOptions, RepoName};
//! let store = ObjectRegistry::new(Arc::new(object_store::memory::InMemory::new()), StoreOptions::default());
//! let repo: RepoName = "library/alpine".parse().unwrap();
//! # let _ = (store, repo);
//! ```

#![warn(missing_docs)]

pub mod digest;
pub mod error;
mod fsretry;
pub mod layout;
pub mod manifest;
pub mod names;
pub mod observe;
pub mod open;
pub mod storage;
mod store;
pub mod timeout;
pub mod units;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{Error, Result};
pub use names::{Reference, RepoName, Tag};
pub use object_store;
pub use storage::{
    BlobRead, BlobStore, ByteStream, CatalogStore, ManifestInfo, ManifestStore, Page, PutManifest,
    ReferrerStore, Storage, UploadStatus, UploadStore,
};
pub use store::{
    Deletion, FsckReport, FsckSummary, GcOptions, GcReport, GcSummary, ObjectRegistry, Problem,
    RepoUsage, StoreOptions, MAX_CACHE_TTL, REPORT_PROBLEMS,
};

#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

#[cfg(any(test, feature = "testsuite"))]
pub mod garage;

#[cfg(test)]
mod backend_tests {
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn in_memory_backend() {
        crate::testsuite::run_all(|| Arc::new(InMemory::new())).await;
    }

    #[tokio::test]
    async fn in_memory_backend_with_scratch() {
        crate::testsuite::run_all_backends(|| crate::testsuite::Backend {
            store: Arc::new(InMemory::new()),
            scratch: Some(Arc::new(InMemory::new())),
            staging: None,
            multipart: None,
        })
        .await;
    }

    /// Upload sessions streaming into multipart uploads, as on S3.
    #[tokio::test]
    async fn in_memory_backend_with_multipart() {
        crate::testsuite::run_all_backends(|| {
            let store = Arc::new(InMemory::new());
            crate::testsuite::Backend {
                multipart: Some(store.clone()),
                ..crate::testsuite::Backend::plain(store)
            }
        })
        .await;
    }

    /// The filesystem as `registry serve` uses it: durable view with fsync, scratch view
    /// without, over one directory, and uploads appended to staging files in it.
    #[tokio::test]
    async fn filesystem_backend_with_scratch() {
        let root = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        crate::testsuite::run_all_backends(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = root.path().join(n.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let view = |fsync| {
                Arc::new(
                    LocalFileSystem::new_with_prefix(&dir)
                        .unwrap()
                        .with_fsync(fsync)
                        .with_automatic_cleanup(true),
                ) as Arc<dyn object_store::ObjectStore>
            };
            crate::testsuite::Backend {
                store: view(true),
                scratch: Some(view(false)),
                staging: Some(dir),
                multipart: None,
            }
        })
        .await;
    }

    /// S3 as `registry serve` uses it: a real Garage, every write durable, no scratch view.
    #[tokio::test]
    async fn s3_backend() {
        let garage = tokio::task::spawn_blocking(crate::garage::Garage::start)
            .await
            .unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        crate::testsuite::run_all_backends(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let prefix = format!("suite-{n}");
            crate::testsuite::Backend {
                multipart: Some(garage.multipart(&prefix)),
                ..crate::testsuite::Backend::plain(garage.store(&prefix))
            }
        })
        .await;
    }

    /// What multipart sessions rely on when two nodes race for one part number (see
    /// `store/uploads/multipart.rs`): S3 refuses to complete an upload with a part whose ETag
    /// is not that of the part's last upload, so the overwritten bytes are never published.
    #[tokio::test]
    async fn s3_refuses_a_completion_naming_an_overwritten_part() {
        use object_store::ObjectStoreExt;
        let garage = tokio::task::spawn_blocking(crate::garage::Garage::start)
            .await
            .unwrap();
        let (store, mp) = (garage.store("race"), garage.multipart("race"));
        let key = object_store::path::Path::from("placed/x");
        let upload = mp.create_multipart(&key).await.unwrap();
        let winner = mp
            .put_part(&key, &upload, 0, vec![1u8; 1000].into())
            .await
            .unwrap();
        mp.put_part(&key, &upload, 0, vec![2u8; 1000].into())
            .await
            .unwrap();
        let completed = mp.complete_multipart(&key, &upload, vec![winner]).await;
        assert!(completed.is_err(), "completed with an overwritten part");
        assert!(store.head(&key).await.is_err());
    }

    #[tokio::test]
    async fn filesystem_backend() {
        let root = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        crate::testsuite::run_all(|| {
            let dir = root.path().join(
                counter
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .to_string(),
            );
            std::fs::create_dir_all(&dir).unwrap();
            Arc::new(
                LocalFileSystem::new_with_prefix(&dir)
                    .unwrap()
                    .with_fsync(true)
                    .with_automatic_cleanup(true),
            )
        })
        .await;
    }
}
