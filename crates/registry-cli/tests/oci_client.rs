//! End-to-end with the `oci-client` crate: a multi-layer image and an artifact with a subject,
//! pushed to and pulled from the real binary.

mod common;

use common::{data, Server};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use registry_core::garage::{Garage, BUCKET};

fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

#[tokio::test]
async fn push_and_pull_multi_layer_image_and_referrer() {
    push_and_pull(&Server::start(&[])).await;
}

/// The same on S3 (a real Garage).
#[tokio::test]
async fn push_and_pull_on_s3() {
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let server = Server::start_on(Some(format!("s3://{BUCKET}/oci-client")), garage.env(), &[]);
    push_and_pull(&server).await;
}

async fn push_and_pull(server: &Server) {
    let client = client();
    let auth = RegistryAuth::Anonymous;
    let image: Reference = format!("{}/team/app:1.0", server.addr).parse().unwrap();

    let layers = vec![
        ImageLayer::oci_v1(data(3 * 1024 * 1024, 1), None),
        ImageLayer::oci_v1(data(10_000, 2), None),
        ImageLayer::oci_v1_gzip(data(777, 3), None),
    ];
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    let pushed = client
        .push(&image, &layers, config.clone(), &auth, None)
        .await
        .expect("push image");
    assert!(pushed.manifest_url.contains("/v2/team/app/manifests/"));

    let pulled = client
        .pull(
            &image,
            &auth,
            vec![
                oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE,
                oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE,
            ],
        )
        .await
        .expect("pull image");
    assert_eq!(pulled.layers.len(), 3);
    let mut got: Vec<(String, usize)> = pulled
        .layers
        .iter()
        .map(|l| (sha(&l.data), l.data.len()))
        .collect();
    let mut want: Vec<(String, usize)> = layers
        .iter()
        .map(|l| (sha(&l.data), l.data.len()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(pulled.config.data == config.data, "config differs");
    let digest = pulled.digest.expect("manifest digest");
    let tags = client.list_tags(&image, &auth, None, None).await.unwrap();
    assert_eq!(tags.tags, ["1.0"]);

    // An artifact (a signature) whose subject is the image.
    let (manifest, manifest_digest) = client
        .pull_manifest_raw(&image, &auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .unwrap();
    assert_eq!(format!("sha256:{}", sha(&manifest)), manifest_digest);
    let sig_layers = vec![ImageLayer::new(
        b"signature".to_vec(),
        "application/vnd.example.signature".into(),
        None,
    )];
    let sig_config = Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.empty.v1+json".into(),
        None,
    );
    let mut sig_manifest = OciImageManifest::build(&sig_layers, &sig_config, None);
    sig_manifest.artifact_type = Some("application/vnd.example.signature".into());
    sig_manifest.subject = Some(OciDescriptor {
        media_type: OCI_IMAGE_MEDIA_TYPE.into(),
        digest: digest.clone(),
        size: manifest.len() as i64,
        ..Default::default()
    });
    let sig_ref: Reference = format!("{}/team/app:sig", server.addr).parse().unwrap();
    client
        .push(&sig_ref, &sig_layers, sig_config, &auth, Some(sig_manifest))
        .await
        .expect("push artifact");

    let by_digest: Reference = format!("{}/team/app@{digest}", server.addr)
        .parse()
        .unwrap();
    let referrers = client
        .pull_referrers(&by_digest, None)
        .await
        .expect("referrers");
    assert_eq!(referrers.manifests.len(), 1);
    assert_eq!(
        referrers.manifests[0].artifact_type.as_deref(),
        Some("application/vnd.example.signature")
    );
    let filtered = client
        .pull_referrers(&by_digest, Some("application/vnd.other"))
        .await
        .unwrap();
    assert!(filtered.manifests.is_empty());
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}
