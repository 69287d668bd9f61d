//! Embeds the registry in another axum application: the application keeps its own routes and
//! mounts the registry beside them. The registry is built as `registry serve` builds one:
//! filesystem storage (fsync, the directory-race retry), the request log, metrics at
//! `/metrics`, upkeep of abandoned uploads.
//!
//! Run: `cargo run -p registry-http --example embed`, then `curl localhost:5000/v2/` and
//! `curl localhost:5000/hello`. With `--check` it binds a free port, asks itself both and
//! exits (CI runs it so).

use axum::routing::get;
use axum::Router;
use registry_http::{ApiConfig, Registry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("embedded-registry");
    let registry = Registry::builder(dir.to_string_lossy().parse()?)
        .api(ApiConfig {
            delete_enabled: false,
            ..ApiConfig::default()
        })
        .build()?;
    // Purges abandoned uploads while `_upkeep` lives.
    let _upkeep = registry.start_upkeep();
    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "the host application's own route\n" }),
        )
        .merge(registry.router());

    let check = std::env::args().any(|a| a == "--check");
    let addr = if check {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:5000"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!(
        "registry embedded at http://{addr}/v2/ (storage {})",
        dir.display()
    );
    if !check {
        axum::serve(listener, app).await?;
        return Ok(());
    }
    tokio::spawn(async move { axum::serve(listener, app).await });
    for (path, status) in [
        ("/v2/", "200"),
        ("/hello", "200"),
        ("/v2/x/tags/list", "404"),
    ] {
        let answer = get_status(addr, path).await?;
        println!("GET {path}: {answer}");
        assert_eq!(answer, status, "GET {path}");
    }
    Ok(())
}

/// The status code of a plain HTTP/1.1 GET.
async fn get_status(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer.split(' ').nth(1).unwrap_or_default().to_owned())
}
