//! A registry started in-process, as an integration test of a tool that talks to registries
//! would start one: in-memory storage on a free port, stopped when dropped. This pushes an
//! image with the `oci-client` crate and pulls it back.
//!
//! Run: `cargo run -p registry-http --example in_process`.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use registry_http::Registry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::builder("memory://".parse()?)
        .request_log(false)
        .build()?
        .spawn("127.0.0.1:0")
        .await?;
    println!("registry at {}", registry.url());

    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let image: Reference = format!("{}/demo/app:1.0", registry.addr()).parse()?;
    let layer = ImageLayer::oci_v1(b"hello from a layer".to_vec(), None);
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    let auth = RegistryAuth::Anonymous;
    let pushed = client
        .push(&image, std::slice::from_ref(&layer), config, &auth, None)
        .await?;
    println!("pushed {}", pushed.manifest_url);

    let pulled = client
        .pull(&image, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
        .await?;
    assert_eq!(pulled.layers.len(), 1);
    assert_eq!(pulled.layers[0].data, layer.data);
    println!(
        "pulled {} with {} layer(s)",
        pulled.digest.unwrap_or_default(),
        pulled.layers.len()
    );
    registry.stop().await;
    Ok(())
}
