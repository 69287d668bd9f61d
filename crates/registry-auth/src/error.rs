//! The one error type of `registry-auth`: settings that cannot be used, and files (htpasswd,
//! certificates, keys) that cannot be read or understood. Each keeps its cause.

use std::path::PathBuf;

/// Why a guard cannot be built as configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file holds (`htpasswd file`, `certificates`, `private key`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but its content cannot be used.
    #[error("{what} {}: {reason}", path.display())]
    Invalid {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A setting's value is invalid (a pattern, an address range, an action, a rule).
    #[error("{text:?} is not {expected}")]
    Setting {
        /// The value as given.
        text: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// An access rule that names nobody or grants nothing.
    #[error("an access rule needs {0}")]
    Rule(&'static str),
    /// A password hash in a format that is not supported or not well-formed.
    #[error("{0}")]
    Hash(String),
    /// A token signing key cannot be made or used.
    #[error("token key: {0}")]
    Key(String),
    /// A token is refused: why, in words a client may see.
    #[error("{0}")]
    InvalidToken(String),
    /// A remote service (an identity provider, a JWKS) could not be asked.
    #[error("cannot reach {what} at {url}: {reason}")]
    Unreachable {
        /// What it is.
        what: &'static str,
        /// Where.
        url: String,
        /// Why not.
        reason: String,
    },
    /// A sign-in with OpenID Connect failed: why, in words the person may see.
    #[error("{0}")]
    SignIn(String),
    /// Where token records are kept could not be read or written.
    #[error("token records: {0}")]
    Records(String),
    /// The operating system gave no randomness.
    #[error("no randomness: {0}")]
    Random(#[from] getrandom::Error),
}

impl Error {
    pub(crate) fn setting(text: &str, expected: &'static str) -> Error {
        Error::Setting {
            text: text.to_owned(),
            expected,
        }
    }
}
