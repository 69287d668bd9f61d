//! Embeds the registry in another axum application: the application keeps its own routes and
//! mounts the registry API beside them, on filesystem storage in a temporary directory.
//!
//! Run: `cargo run -p registry-http --example embed`, then `curl localhost:5000/v2/` and
//! `curl localhost:5000/hello`.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use object_store::local::LocalFileSystem;
use registry_core::{ObjectRegistry, StoreOptions};
use registry_http::{router, ApiConfig, RegistryState};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("embedded-registry");
    std::fs::create_dir_all(&dir)?;
    let store = LocalFileSystem::new_with_prefix(&dir)?.with_fsync(true);
    let storage = ObjectRegistry::new(Arc::new(store), StoreOptions::default());
    let registry = router(RegistryState::new(
        Arc::new(storage),
        ApiConfig {
            delete_enabled: false,
            ..ApiConfig::default()
        },
    ));

    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "the host application's own route\n" }),
        )
        .merge(registry)
        .layer(axum::middleware::from_fn(registry_http::log::log_requests));

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "registry embedded at http://{addr}/v2/ (storage {})",
        dir.display()
    );
    if std::env::var_os("EMBED_EXIT_AFTER_BIND").is_some() {
        return Ok(());
    }
    axum::serve(listener, app).await?;
    Ok(())
}
