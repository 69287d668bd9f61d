//! The one error type of `registry-core`: each variant is a distinct outcome that the HTTP layer
//! maps to an OCI error code, so callers never match on message strings.

use crate::digest::Digest;

/// Everything that can go wrong in validation and storage. Deliberately exhaustive: whoever
/// maps these to answers (the HTTP layer) must decide for each new variant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A repository name does not match the grammar.
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    /// A tag does not match the grammar.
    #[error("invalid tag {0:?}")]
    TagInvalid(String),
    /// A digest is malformed or uses an unsupported algorithm.
    #[error("{0}")]
    DigestInvalid(String),
    /// Uploaded content does not hash to the digest the client named.
    #[error("digest mismatch: client named {expected}, content is {actual}")]
    DigestMismatch {
        /// What the client said.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The repository has no such blob.
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(Digest),
    /// The repository has no such manifest or tag.
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// The repository does not exist.
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    /// The upload session does not exist (or belongs to another repository).
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    /// A chunk does not continue the upload where it stands.
    #[error("chunk starts at {got} but the upload holds {expected} bytes")]
    RangeInvalid {
        /// The upload's current size, where the next chunk must start.
        expected: u64,
        /// Where the client's chunk started.
        got: u64,
    },
    /// Another request appended to the same upload at the same time and won; the upload now
    /// holds `size` bytes, where the client may resume.
    #[error("another request appended to this upload at the same time; it holds {size} bytes")]
    ConcurrentAppend {
        /// The upload's current size.
        size: u64,
    },
    /// The number of bytes received differs from what the client declared.
    #[error("size mismatch: declared {declared}, received {received}")]
    SizeInvalid {
        /// Declared length.
        declared: u64,
        /// Received length.
        received: u64,
    },
    /// The manifest cannot be accepted as sent.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// A manifest references content the repository does not hold.
    #[error("manifest references unknown blob {0}")]
    ManifestBlobUnknown(Digest),
    /// The operation is not supported (e.g. schema1 manifests).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The client's request body failed while streaming (disconnect, framing error).
    #[error("request body failed: {0}")]
    Body(#[source] std::io::Error),
    /// Stored state could not be decoded: storage was tampered with or damaged.
    #[error("corrupt stored state at {path}: {reason}")]
    Corrupt {
        /// Storage key.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A garbage collection is deleting this blob or manifest: a manifest needing it fails
    /// like one needing a missing blob, and the client pushes it again.
    #[error("{0} is being garbage-collected; push it again")]
    Doomed(Digest),
    /// Another garbage collection holds the storage's lease: it runs, or was killed and its
    /// lease has not expired yet (`GcOptions::break_lease` takes it over).
    #[error("another garbage collection is running on this storage (if it was killed, its lease expires within {expires_in:?})")]
    GcRunning {
        /// When the lease expires unless renewed.
        expires_in: std::time::Duration,
    },
    /// The request is refused whoever makes it (a push to a pull-through cache's repository).
    #[error("denied: {0}")]
    Denied(String),
    /// An upstream registry answered with something unusable (an error status, content that
    /// does not match its digest, a truncated body): nothing of it was stored.
    #[error("upstream: {0}")]
    Upstream(String),
    /// An upstream registry could not be reached, timed out, or is rate limiting, and nothing
    /// cached can answer instead.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// A setting or location cannot be used as given.
    #[error("{0}")]
    Config(String),
    /// The storage cannot be opened.
    #[error("cannot open storage {location}: {source}")]
    Open {
        /// Where it is.
        location: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[from] object_store::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
