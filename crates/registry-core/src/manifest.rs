//! Manifest parsing and validation. The exact bytes a client sends are what is stored and hashed;
//! parsing only extracts what the registry must check: the media type, the descriptors the
//! manifest references, its subject, artifactType and annotations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The OCI empty descriptor's media type.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SCHEMA1: [&str; 3] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
];

/// Every manifest media type the registry stores.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// A content descriptor as it appears inside manifests and the referrers index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Artifact type (referrers, artifacts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Locations of non-distributable content; such layers are not required to be in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Platform of an index entry, kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// Whether a manifest points at blobs or at other manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// Image manifest: config and layers are blobs.
    Image,
    /// Index or manifest list: entries are manifests.
    Index,
}

/// What the registry needs to know about a manifest.
#[derive(Clone, Debug)]
pub struct ParsedManifest {
    /// The media type (from `Content-Type` or the body).
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// For an image: config then layers (blobs). For an index: child manifests.
    pub references: Vec<Descriptor>,
    /// The subject, for referrers.
    pub subject: Option<Descriptor>,
    /// The manifest's artifactType, or for an image with none, its config media type.
    pub artifact_type: Option<String>,
    /// Manifest annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Schema 1 marker fields.
    fs_layers: Option<serde_json::Value>,
    signatures: Option<serde_json::Value>,
}

/// Strips parameters (`; charset=…`) and whitespace from a media type.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parses and validates a manifest. `content_type` is the request's `Content-Type` (parameters
/// allowed), or `None` when absent, in which case the body's `mediaType` decides.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest> {
    let declared = content_type.map(essence).filter(|s| !s.is_empty());
    if let Some(t) = declared {
        if SCHEMA1.contains(&t) && t != "application/json" {
            return Err(schema1());
        }
    }
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| Error::ManifestInvalid(format!("not a valid manifest document: {e}")))?;
    if raw.fs_layers.is_some() || raw.signatures.is_some() || raw.schema_version == Some(1) {
        return Err(schema1());
    }
    if raw.schema_version != Some(2) {
        return Err(Error::ManifestInvalid("schemaVersion must be 2".into()));
    }
    let media_type = match (declared, raw.media_type.as_deref()) {
        (Some("application/json") | None, Some(body)) => body.to_owned(),
        (Some(header), Some(body)) if header != body => {
            return Err(Error::ManifestInvalid(format!(
                "mediaType {body:?} does not match Content-Type {header:?}"
            )))
        }
        (Some(header), _) if header != "application/json" => header.to_owned(),
        // No usable type anywhere: infer OCI from the shape, as the image-spec allows.
        _ if raw.config.is_some() => OCI_MANIFEST.to_owned(),
        _ if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        _ => {
            return Err(Error::ManifestInvalid(
                "cannot tell the manifest type".into(),
            ))
        }
    };
    let (kind, references) = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw
                .config
                .ok_or_else(|| Error::ManifestInvalid("config is required".into()))?;
            if raw.manifests.is_some() {
                return Err(Error::ManifestInvalid(
                    "an image manifest has no manifests field".into(),
                ));
            }
            if media_type == DOCKER_MANIFEST && raw.media_type.is_none() {
                return Err(Error::ManifestInvalid(
                    "mediaType is required in a Docker manifest".into(),
                ));
            }
            if config.media_type == OCI_EMPTY && raw.artifact_type.is_none() {
                return Err(Error::ManifestInvalid(
                    "artifactType is required when config is the empty descriptor".into(),
                ));
            }
            let mut refs = vec![config];
            refs.extend(raw.layers.unwrap_or_default());
            (ManifestKind::Image, refs)
        }
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let manifests = raw
                .manifests
                .ok_or_else(|| Error::ManifestInvalid("manifests is required".into()))?;
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(Error::ManifestInvalid(
                    "an index has no config or layers".into(),
                ));
            }
            (ManifestKind::Index, manifests)
        }
        t if SCHEMA1.contains(&t) => return Err(schema1()),
        other => {
            return Err(Error::ManifestInvalid(format!(
                "unsupported manifest media type {other:?}"
            )))
        }
    };
    let artifact_type = raw.artifact_type.or_else(|| match kind {
        ManifestKind::Image => references.first().map(|c| c.media_type.clone()),
        ManifestKind::Index => None,
    });
    Ok(ParsedManifest {
        media_type,
        kind,
        references,
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

fn schema1() -> Error {
    Error::ManifestInvalid(
        "Docker schema 1 manifests are not supported; push schema 2 or OCI manifests".into(),
    )
}

impl ParsedManifest {
    /// The references the registry must hold before it accepts the manifest: everything except
    /// non-distributable layers, which carry `urls` and live elsewhere.
    pub fn required_references(&self) -> impl Iterator<Item = &Descriptor> {
        self.references.iter().filter(|d| d.urls.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn oci_image_without_media_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"x","digest":"{}","size":3,"urls":["http://x"]}}],"extra":1}}"#,
            d('a'),
            d('b')
        );
        let m = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.references.len(), 2);
        assert_eq!(m.required_references().count(), 1);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let m = parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
    }

    #[test]
    fn mismatched_type_rejected() {
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(matches!(
            parse(Some(OCI_MANIFEST), body.as_bytes()),
            Err(Error::ManifestInvalid(_))
        ));
        let m = parse(
            Some(&format!("{OCI_INDEX}; charset=utf-8")),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.artifact_type, None);
    }

    #[test]
    fn rejects_bad_documents() {
        for (ct, body) in [
            (Some(OCI_MANIFEST), "not json"),
            (Some(OCI_MANIFEST), r#"{"schemaVersion":3,"config":null}"#),
            (Some(OCI_MANIFEST), r#"{"schemaVersion":2}"#),
            (Some(OCI_INDEX), r#"{"schemaVersion":2}"#),
            (Some("text/plain"), r#"{"schemaVersion":2,"manifests":[]}"#),
            (
                Some(DOCKER_MANIFEST),
                r#"{"schemaVersion":1,"fsLayers":[]}"#,
            ),
            (
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                "{}",
            ),
            (None, r#"{"schemaVersion":2}"#),
            (
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2,"config":{"mediaType":"m","digest":"sha256:zz","size":1}}"#,
            ),
        ] {
            assert!(parse(ct, body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn empty_config_needs_artifact_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_EMPTY}","digest":"{}","size":2}},"layers":[]}}"#,
            d('4')
        );
        assert!(parse(Some(OCI_MANIFEST), body.as_bytes()).is_err());
        let body = body.replacen('{', r#"{"artifactType":"application/x.sig","#, 1);
        let m = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
    }
}
