//! Opening storage from where it is: a directory, `file:///abs/path`, `s3://bucket/prefix` (with
//! [`S3Location`] settings, the rest from the standard `AWS_*` variables) or `memory://`. What
//! [`open`] returns is what `registry serve` runs on, so an embedder gets the same guarantees:
//!
//! - **Filesystem**: two views of one directory, one that fsyncs every write (whatever a client
//!   is told is stored) and one that does not (the chunks of multi-chunk uploads, written
//!   durably once when published; see the uploads module); both retry writes that object_store's
//!   own directory cleanup races ([`fsretry`](crate::fsretry)); reads in 1 MiB chunks (blob
//!   reads open the blob's file directly, and read 4 MiB at a time from 32 MiB on).
//! - **S3**: plain HTTP only to loopback endpoints unless allowed; retries (3, within 15 s);
//!   a whole request may take a day (a slow pull of a big blob is not cut off) but a read that
//!   makes no progress fails after `stall_timeout` (60 s) and connecting after 5 s; operations on
//!   small objects fail after `metadata_timeout` (5 s, [`TimeoutStore`]); optional presigned
//!   redirects for blob reads; upload sessions stream into one multipart upload each.
//! - **Memory**: for tests; lost when dropped.
//!
//! ```
//! use registry_core::open::{open, StorageLocation};
//!
//! let location: StorageLocation = "memory://".parse()?;
//! let registry = open(&location)?.registry();
//! # let _ = registry;
//! # Ok::<(), registry_core::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::chunked::ChunkedStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::fsretry::DirRaceRetry;
use crate::store::{ObjectRegistry, StoreOptions};
use crate::timeout::TimeoutStore;

/// Where blobs and manifests live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory on the local filesystem.
    Filesystem(PathBuf),
    /// Process memory (tests, benchmarks); lost on exit.
    Memory,
    /// An S3-compatible bucket, under a key prefix.
    S3(S3Location),
}

/// A secret setting: never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// An S3 bucket and how to reach it. Unset values come from the standard `AWS_*` environment
/// variables (as object_store reads them). Deserializes from the `[storage.s3]` table of the
/// configuration file (durations as text: `"5s"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Location {
    /// The bucket (from the URL).
    #[serde(skip)]
    pub bucket: String,
    /// The key prefix everything lives under (from the URL), without slashes at either end.
    #[serde(skip)]
    pub prefix: String,
    /// e.g. `https://s3.eu-central-1.amazonaws.com`, `http://127.0.0.1:3900`.
    pub endpoint: Option<String>,
    /// `auto` for Cloudflare R2.
    pub region: Option<String>,
    /// The access key.
    pub access_key_id: Option<String>,
    /// Its secret.
    pub secret_access_key: Option<Secret>,
    /// A session token, for temporary credentials.
    pub session_token: Option<Secret>,
    /// Plain HTTP to a non-loopback endpoint (loopback endpoints may always use it).
    pub allow_http: Option<bool>,
    /// `bucket.endpoint/key` addressing instead of `endpoint/bucket/key`.
    pub virtual_hosted: Option<bool>,
    /// Blob GETs answer 307 to a presigned URL: the bytes flow from S3, not the registry.
    pub redirect: Option<bool>,
    /// Operations on small objects (heads, reads until they answer, small puts, listings,
    /// deletions) fail after this (default 5 s), so a stalled S3 gives 503 quickly.
    #[serde(default, with = "crate::units::opt_duration")]
    pub metadata_timeout: Option<Duration>,
    /// A read of blob data that makes no progress fails after this (default 60 s, or
    /// `AWS_READ_TIMEOUT`).
    #[serde(default, with = "crate::units::opt_duration")]
    pub stall_timeout: Option<Duration>,
}

impl S3Location {
    /// Checks the settings that need no network: bounds must be more than zero.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("metadata_timeout", self.metadata_timeout),
            ("stall_timeout", self.stall_timeout),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(Error::Config(format!(
                    "storage.s3.{key} must be more than 0"
                )));
            }
        }
        Ok(())
    }
}

impl FromStr for StorageLocation {
    type Err = Error;

    /// Parses a directory, `file:///abs/path`, `s3://bucket/prefix` or `memory://`.
    fn from_str(s: &str) -> Result<StorageLocation> {
        let invalid = |why: String| Err(Error::Config(format!("storage URL {s:?}: {why}")));
        if s == "memory://" {
            return Ok(StorageLocation::Memory);
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return invalid(format!("{bucket:?} is not an S3 bucket name"));
            }
            return Ok(StorageLocation::S3(S3Location {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                ..S3Location::default()
            }));
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return invalid(
                    "file:// URLs need an absolute path (file:///srv/registry)".to_owned(),
                );
            }
            return Ok(StorageLocation::Filesystem(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return invalid(format!(
                "unsupported scheme {scheme:?} (use a directory, file://, s3:// or memory://)"
            ));
        }
        if s.is_empty() {
            return Err(Error::Config("storage location is empty".to_owned()));
        }
        Ok(StorageLocation::Filesystem(PathBuf::from(s)))
    }
}

impl fmt::Display for StorageLocation {
    /// Where it is, in words; never credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageLocation::Filesystem(p) => write!(f, "filesystem {}", p.display()),
            StorageLocation::Memory => f.write_str("memory (lost on exit)"),
            StorageLocation::S3(loc) => write!(
                f,
                "S3 bucket {} prefix {:?}{}",
                loc.bucket,
                loc.prefix,
                loc.endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Storage as [`open`] opened it: the durable store, an optional scratch view for upload
/// chunks, the tunables that suit it, and what signs redirects.
pub struct OpenedStorage {
    /// Everything a client is told is stored goes here.
    pub store: Arc<dyn ObjectStore>,
    /// Upload chunks after the first (see [`ObjectRegistry::with_scratch`]).
    pub scratch: Option<Arc<dyn ObjectStore>>,
    /// Multipart uploads of the same storage, for upload sessions (see
    /// [`ObjectRegistry::with_multipart`]).
    pub multipart: Option<Arc<dyn MultipartStore>>,
    /// Tunables for the backend.
    pub options: StoreOptions,
    /// The root directory of a filesystem store, where uploads append in place (see
    /// [`ObjectRegistry::with_local_staging`]).
    pub staging: Option<PathBuf>,
    presigner: Option<(Arc<dyn Signer>, String)>,
}

impl fmt::Debug for OpenedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedStorage")
            .field("store", &self.store.to_string())
            .field("scratch", &self.scratch.as_ref().map(|s| s.to_string()))
            .field("multipart", &self.multipart.is_some())
            .field("options", &self.options)
            .field("redirects", &self.presigner.is_some())
            .finish()
    }
}

/// Reads are served in chunks of this size (object_store's default for files is 8 KiB). Each
/// chunk is one trip to the blocking pool: a 1 GiB pull with 256 KiB chunks spent most of its
/// CPU on those trips (thread wake-ups and switches); 1 MiB chunks cut its CPU from 0.36 to
/// 0.30 s per GiB with curl on one connection.
pub(crate) const READ_CHUNK: usize = 1024 * 1024;

/// Blob reads of at least this many bytes go in [`BIG_READ_CHUNK`]s on the filesystem (and
/// the HTTP layer reads bodies this long ahead of sending).
pub const BIG_READ_FROM: u64 = 32 << 20;

/// Each chunk read is a trip to the blocking pool and back (thread wake-ups and switches were
/// 13 % of a 1 GiB pull's CPU with 1 MiB chunks, 5 % with 4 MiB): big reads take fewer, bigger
/// ones.
pub(crate) const BIG_READ_CHUNK: u64 = 4 << 20;

/// How long a redirect's presigned URL stays valid.
pub const REDIRECT_TTL: Duration = Duration::from_secs(20 * 60);

/// Opens the storage at `location` (see the module documentation). Creates a directory that
/// does not exist yet; talks to no S3 server yet.
pub fn open(location: &StorageLocation) -> Result<OpenedStorage> {
    match location {
        StorageLocation::Filesystem(dir) => open_filesystem(dir),
        StorageLocation::S3(loc) => open_s3(loc),
        StorageLocation::Memory => Ok(OpenedStorage {
            store: Arc::new(InMemory::new()),
            scratch: None,
            multipart: None,
            options: StoreOptions::default(),
            staging: None,
            presigner: None,
        }),
    }
}

impl OpenedStorage {
    /// Wraps the store and the scratch view (e.g. in an `ObservedStore` for metrics).
    pub fn map_stores(
        mut self,
        wrap: impl Fn(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> OpenedStorage {
        self.store = wrap(self.store);
        self.scratch = self.scratch.map(&wrap);
        self
    }

    /// Wraps the multipart uploads (e.g. in an `ObservedMultipart` for metrics).
    pub fn map_multipart(
        mut self,
        wrap: impl Fn(Arc<dyn MultipartStore>) -> Arc<dyn MultipartStore>,
    ) -> OpenedStorage {
        self.multipart = self.multipart.map(wrap);
        self
    }

    /// The registry over this storage.
    pub fn registry(self) -> ObjectRegistry {
        let mut registry = ObjectRegistry::new(self.store, self.options);
        if let Some(scratch) = self.scratch {
            registry = registry.with_scratch(scratch);
        }
        if let Some(root) = self.staging {
            registry = registry.with_local_staging(root);
        }
        if let Some(multipart) = self.multipart {
            registry = registry.with_multipart(multipart);
        }
        if let Some((signer, prefix)) = self.presigner {
            registry = registry.with_presigned_reads(signer, &prefix, REDIRECT_TTL);
        }
        registry
    }
}

fn open_filesystem(dir: &Path) -> Result<OpenedStorage> {
    let unusable = |e: std::io::Error| Error::Open {
        location: dir.display().to_string(),
        source: Box::new(e),
    };
    std::fs::create_dir_all(dir).map_err(unusable)?;
    let view = |fsync: bool| -> Result<Arc<dyn ObjectStore>> {
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::Open {
                location: dir.display().to_string(),
                source: Box::new(e),
            })?
            .with_fsync(fsync)
            .with_automatic_cleanup(true);
        let fs = Arc::new(DirRaceRetry(Arc::new(fs)));
        Ok(Arc::new(ChunkedStore::new(fs, READ_CHUNK)))
    };
    Ok(OpenedStorage {
        store: view(true)?,
        scratch: Some(view(false)?),
        multipart: None,
        options: StoreOptions {
            // Local writes go straight to a staged file, so a small buffer suffices.
            write_buffer: 1024 * 1024,
            write_concurrency: 2,
            // Files cost little: rewrite less of them to merge small chunks.
            coalesce_below: 256 * 1024,
            ..StoreOptions::default()
        },
        staging: Some(std::fs::canonicalize(dir).map_err(unusable)?),
        presigner: None,
    })
}

fn open_s3(loc: &S3Location) -> Result<OpenedStorage> {
    loc.validate()?;
    let s3 = Arc::new(s3_client(loc)?);
    let (store, multipart): (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) =
        match loc.prefix.as_str() {
            "" => (s3.clone(), s3.clone()),
            p => (
                Arc::new(PrefixStore::new(s3.clone(), p)),
                Arc::new(PrefixStore::new(AmazonS3::clone(&s3), p)),
            ),
        };
    let metadata_timeout = loc.metadata_timeout.unwrap_or(Duration::from_secs(5));
    Ok(OpenedStorage {
        store: Arc::new(TimeoutStore::new(store, metadata_timeout)),
        scratch: None,
        multipart: Some(multipart),
        // Streaming writes become S3 multipart uploads of 8 MiB parts; S3 copies at most
        // 5 GiB in one request (sessions started before multipart sessions still rename).
        options: StoreOptions {
            copy_limit: 5 << 30,
            ..StoreOptions::default()
        },
        staging: None,
        presigner: (loc.redirect == Some(true))
            .then(|| (s3 as Arc<dyn Signer>, loc.prefix.clone())),
    })
}

/// The S3 client: settings from `loc`, the rest from `AWS_*` variables; plain HTTP only to
/// loopback endpoints unless allowed explicitly; a failing S3 is given up on within seconds.
fn s3_client(loc: &S3Location) -> Result<AmazonS3> {
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
        ..RetryConfig::default()
    };
    let mut b = AmazonS3Builder::from_env()
        .with_retry(retry)
        .with_bucket_name(&loc.bucket);
    // object_store's default 30 s limit covers a whole request, body included: a pull of a big
    // blob by a client slower than size/30 s was cut off. Instead: a day for the whole request,
    // and a stall of one read (or of connecting) fails it, unless AWS_* variables say otherwise.
    // `stall_timeout` overrides AWS_READ_TIMEOUT. Operations on small objects are bounded
    // more tightly by the TimeoutStore around the client.
    let stall = loc.stall_timeout.map(|d| format!("{}ms", d.as_millis()));
    for (key, default, configured) in [
        (ClientConfigKey::Timeout, "1d", None),
        (ClientConfigKey::ReadTimeout, "60s", stall),
        (ClientConfigKey::ConnectTimeout, "5s", None),
    ] {
        // (get_config_value reports object_store's defaults too: ask the environment.)
        let variable = format!("AWS_{}", key.as_ref().to_ascii_uppercase());
        match configured {
            Some(value) => b = b.with_config(AmazonS3ConfigKey::Client(key), value),
            None if std::env::var_os(variable).is_none() => {
                b = b.with_config(AmazonS3ConfigKey::Client(key), default)
            }
            None => {}
        }
    }
    if let Some(e) = &loc.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &loc.region {
        b = b.with_region(r);
    }
    if let Some(k) = &loc.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(Secret(k)) = &loc.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    if let Some(Secret(t)) = &loc.session_token {
        b = b.with_token(t);
    }
    if let Some(v) = loc.virtual_hosted {
        b = b.with_virtual_hosted_style_request(v);
    }
    let endpoint = loc
        .endpoint
        .clone()
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if let Some(e) = endpoint.as_deref().filter(|e| e.starts_with("http://")) {
        let loopback = e
            .trim_start_matches("http://")
            .split(['/', ':'])
            .next()
            .is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        let allowed = loc.allow_http.unwrap_or(false)
            || b.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
                .is_some_and(|v| v == "true");
        if !loopback && !allowed {
            return Err(Error::Config(format!(
                "S3 endpoint {e} is plain HTTP: set storage.s3.allow_http = true (or AWS_ALLOW_HTTP=true) to allow it"
            )));
        }
        b = b.with_allow_http(true);
    }
    b.build().map_err(|e| Error::Open {
        location: format!("S3 bucket {:?}", loc.bucket),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let s3: StorageLocation = "s3://my-bucket/reg/istry/".parse().unwrap();
        let StorageLocation::S3(loc) = &s3 else {
            panic!("{s3:?}")
        };
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str()),
            ("my-bucket", "reg/istry")
        );
        assert_eq!(
            "file:///srv/r".parse::<StorageLocation>().unwrap(),
            StorageLocation::Filesystem("/srv/r".into())
        );
        assert_eq!(
            "./data".parse::<StorageLocation>().unwrap(),
            StorageLocation::Filesystem("./data".into())
        );
        assert_eq!(
            "memory://".parse::<StorageLocation>().unwrap(),
            StorageLocation::Memory
        );
        for bad in [
            "ftp://x",
            "file://relative",
            "s3://Bad_Bucket/x",
            "s3://",
            "",
        ] {
            assert!(bad.parse::<StorageLocation>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn s3_settings_from_toml_never_print_secrets() {
        let loc: S3Location = serde_json::from_value(serde_json::json!({
            "region": "garage",
            "secret_access_key": "hush",
            "metadata_timeout": "3s",
        }))
        .unwrap();
        assert_eq!(loc.metadata_timeout, Some(Duration::from_secs(3)));
        assert!(!format!("{loc:?}").contains("hush"));
        let zero: S3Location =
            serde_json::from_value(serde_json::json!({"stall_timeout": "0s"})).unwrap();
        assert!(zero.validate().is_err());
        assert!(serde_json::from_value::<S3Location>(serde_json::json!({"nope": 1})).is_err());
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let loc = |endpoint: &str, allow| S3Location {
            bucket: "b".into(),
            endpoint: Some(endpoint.into()),
            region: Some("r".into()),
            allow_http: allow,
            ..S3Location::default()
        };
        assert!(open(&StorageLocation::S3(loc("http://127.0.0.1:3900", None))).is_ok());
        assert!(open(&StorageLocation::S3(loc("http://s3.example.com", None))).is_err());
        assert!(open(&StorageLocation::S3(loc(
            "http://s3.example.com",
            Some(true)
        )))
        .is_ok());
    }
}
