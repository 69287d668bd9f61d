//! The keys an instance signs its tokens with: ES256 (ECDSA P-256) keys in PKCS#8 PEM files,
//! each known by its RFC 7638 thumbprint, which goes into every token as `kid`. A rotation keeps
//! the previous key for verifying only, so tokens signed before it stay valid until they
//! expire.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use sha2::{Digest as _, Sha256};

use crate::watch::Watched;
use crate::Error;

/// A key tokens are signed with.
pub struct SigningKey {
    kid: String,
    /// The public point's coordinates, base64url.
    x: String,
    y: String,
    encoding: EncodingKey,
    verifying: VerifyingKey,
}

/// A key tokens are verified with, known by its `kid`.
#[derive(Clone)]
pub struct VerifyingKey {
    pub(crate) kid: String,
    pub(crate) key: DecodingKey,
    /// The algorithms of its kind (a token must use one of them).
    pub(crate) algorithms: Vec<jsonwebtoken::Algorithm>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({}, {:?})", self.kid, self.algorithms)
    }
}

impl SigningKey {
    /// A new key, and its PKCS#8 PEM to store (0600).
    pub fn generate() -> Result<(SigningKey, String), Error> {
        let document =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| Error::Key("cannot generate a P-256 key".into()))?;
        let pem = pem_encode("PRIVATE KEY", document.as_ref());
        let key = SigningKey::from_pkcs8(document.as_ref())?;
        Ok((key, pem))
    }

    /// Reads a key from its PKCS#8 PEM file.
    pub fn load(path: &Path) -> Result<SigningKey, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            what: "token signing key",
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: &str| Error::Invalid {
            what: "token signing key",
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let der = pem_decode("PRIVATE KEY", &text).ok_or_else(|| invalid("no PKCS#8 PEM"))?;
        SigningKey::from_pkcs8(&der).map_err(|_| invalid("not an ECDSA P-256 PKCS#8 key"))
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, Error> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| Error::Key(format!("not an ECDSA P-256 key: {e}")))?;
        let point = pair.public_key().as_ref();
        // An uncompressed P-256 point: 0x04, then x and y (32 bytes each).
        let (x, y) = match point {
            [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => return Err(Error::Key("unexpected public key encoding".into())),
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let kid = thumbprint(&x, &y);
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| Error::Key(format!("unusable public key: {e}")))?;
        Ok(SigningKey {
            verifying: VerifyingKey {
                kid: kid.clone(),
                key: decoding,
                algorithms: vec![jsonwebtoken::Algorithm::ES256],
            },
            kid,
            x,
            y,
            encoding: EncodingKey::from_ec_der(der),
        })
    }

    /// Its key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its public key as a JWK (RFC 7517), for a JWKS others verify with.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        })
    }

    /// What verifies what it signs.
    pub fn verifying(&self) -> VerifyingKey {
        self.verifying.clone()
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// The RFC 7638 thumbprint of a P-256 public key: base64url of the SHA-256 of its canonical JWK.
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn pem_decode(label: &str, text: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop].split_whitespace().collect();
    STANDARD.decode(body).ok()
}

/// How often the key files are looked at for a rotation.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The keys of one instance: the current key (signs and verifies) and, after a rotation, the
/// previous one (verifies only). Opened from a directory, the files are watched, so a rotation
/// by `registry token rotate-key` takes effect without a restart.
pub struct KeyRing(Keys);

enum Keys {
    Watched(Watched<KeySet>),
    Fixed(Arc<KeySet>),
}

struct KeySet {
    current: Arc<SigningKey>,
    previous: Option<Arc<SigningKey>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({:?})", self.key_ids())
    }
}

impl KeyRing {
    /// The keys in `dir` ([`CURRENT_KEY`], and [`PREVIOUS_KEY`] if present), watched.
    pub fn open(dir: &Path) -> Result<KeyRing, Error> {
        let current = dir.join(CURRENT_KEY);
        let previous = dir.join(PREVIOUS_KEY);
        let paths = vec![current.clone(), previous.clone()];
        let keys = Watched::new("token signing keys", paths, RELOAD_CHECK, move || {
            Ok(KeySet {
                current: Arc::new(SigningKey::load(&current)?),
                previous: if previous.exists() {
                    Some(Arc::new(SigningKey::load(&previous)?))
                } else {
                    None
                },
            })
        })?;
        Ok(KeyRing(Keys::Watched(keys)))
    }

    /// Fixed keys (for embedders that keep keys elsewhere, and tests).
    pub fn fixed(current: SigningKey, previous: Option<SigningKey>) -> KeyRing {
        KeyRing(Keys::Fixed(Arc::new(KeySet {
            current: Arc::new(current),
            previous: previous.map(Arc::new),
        })))
    }

    fn set(&self) -> Arc<KeySet> {
        match &self.0 {
            Keys::Watched(w) => w.get(),
            Keys::Fixed(set) => set.clone(),
        }
    }

    /// The key that signs now.
    pub fn current(&self) -> Arc<SigningKey> {
        self.set().current.clone()
    }

    /// The key named `kid`, if it is the current or the previous one.
    pub fn find(&self, kid: &str) -> Option<VerifyingKey> {
        let set = self.set();
        std::iter::once(&set.current)
            .chain(set.previous.as_ref())
            .find(|k| k.kid == kid)
            .map(|k| k.verifying())
    }

    /// The public keys as a JWKS (`{"keys": [...]}`): what verifies this instance's tokens.
    pub fn jwks(&self) -> serde_json::Value {
        let set = self.set();
        let keys: Vec<serde_json::Value> = std::iter::once(&set.current)
            .chain(set.previous.as_ref())
            .map(|k| k.jwk())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The ids of the current key and the previous one.
    pub fn key_ids(&self) -> Vec<String> {
        let set = self.set();
        std::iter::once(&set.current)
            .chain(set.previous.as_ref())
            .map(|k| k.kid.clone())
            .collect()
    }
}

/// The current key's file in an instance's token directory.
pub const CURRENT_KEY: &str = "signing-key.pem";
/// The previous key's file (verifying only, after a rotation).
pub const PREVIOUS_KEY: &str = "previous-key.pem";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem() {
        let (key, pem) = SigningKey::generate().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, &pem).unwrap();
        let again = SigningKey::load(&path).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(key.kid().len(), 43, "a SHA-256 in base64url");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(SigningKey::load(&path).is_err());
        assert!(SigningKey::load(&dir.path().join("missing")).is_err());
    }
}
