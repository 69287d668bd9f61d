//! The keys of an external token issuer, as Distribution's `auth.token` settings name them: a
//! root certificate bundle (a token carries its signing certificate in `x5c`, which must chain
//! to a root of the bundle; or names a bundle certificate's key by its libtrust `kid`), or a
//! JWKS (a file, or a URL fetched again when a token names a key it does not hold yet, at most
//! every 30 seconds). Only asymmetric keys count, each with the algorithms of its kind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::VerifyingKey;
use crate::Error;

/// How often a JWKS URL is fetched again for an unknown key id, at most.
const REFETCH: Duration = Duration::from_secs(30);

/// An external issuer's keys (see the module documentation).
pub struct TrustedKeys {
    roots: Vec<CertificateDer<'static>>,
    by_kid: RwLock<HashMap<String, VerifyingKey>>,
    jwks_url: Option<String>,
    fetched: Mutex<Option<Instant>>,
}

impl TrustedKeys {
    fn new(roots: Vec<CertificateDer<'static>>, keys: Vec<VerifyingKey>) -> TrustedKeys {
        TrustedKeys {
            roots,
            by_kid: RwLock::new(keys.into_iter().map(|k| (k.kid.clone(), k)).collect()),
            jwks_url: None,
            fetched: Mutex::new(None),
        }
    }

    /// The certificates of a PEM bundle: tokens chain to them (`x5c`) or name their keys.
    pub fn from_bundle(path: &Path) -> Result<TrustedKeys, Error> {
        let invalid = |reason: String| Error::Invalid {
            what: "token root certificate bundle",
            path: path.to_owned(),
            reason,
        };
        use rustls::pki_types::pem::PemObject;
        let roots = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid(e.to_string()))?;
        if roots.is_empty() {
            return Err(invalid("holds no PEM certificate".into()));
        }
        let mut keys = Vec::new();
        for root in &roots {
            let (kid, key) = certificate_key(root).map_err(|e| invalid(e.to_string()))?;
            keys.push(VerifyingKey { kid, ..key });
        }
        Ok(TrustedKeys::new(roots, keys))
    }

    /// The keys of a JWKS file.
    pub fn from_jwks_file(path: &Path) -> Result<TrustedKeys, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            what: "JWKS",
            path: path.to_owned(),
            source,
        })?;
        let keys = jwks_keys(&text).map_err(|reason| Error::Invalid {
            what: "JWKS",
            path: path.to_owned(),
            reason,
        })?;
        Ok(TrustedKeys::new(Vec::new(), keys))
    }

    /// The keys of a JWKS at a URL, fetched when first needed and again for unknown key ids.
    pub fn from_jwks_url(url: &str) -> TrustedKeys {
        TrustedKeys {
            jwks_url: Some(url.to_owned()),
            ..TrustedKeys::new(Vec::new(), Vec::new())
        }
    }

    /// The ids of the keys held now.
    pub fn key_ids(&self) -> Vec<String> {
        let keys = self.by_kid.read().unwrap_or_else(|e| e.into_inner());
        keys.keys().cloned().collect()
    }

    /// The key that verifies a token with `header`.
    pub(crate) async fn key_for(&self, header: &Header) -> Result<VerifyingKey, Error> {
        let invalid = |why: &str| Error::InvalidToken(why.to_owned());
        if let Some(chain) = &header.x5c {
            return self
                .chain_key(chain)
                .map_err(|_| invalid("the token's certificate is not trusted"));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the token names no key"))?;
        if let Some(key) = self.held(kid) {
            return Ok(key);
        }
        if self.refetch_due() {
            self.fetch().await?;
            if let Some(key) = self.held(kid) {
                return Ok(key);
            }
        }
        Err(invalid("the token's key is unknown"))
    }

    fn held(&self, kid: &str) -> Option<VerifyingKey> {
        let keys = self.by_kid.read().unwrap_or_else(|e| e.into_inner());
        keys.get(kid).cloned()
    }

    /// Whether a JWKS URL may be fetched now (first time, or not within [`REFETCH`]).
    fn refetch_due(&self) -> bool {
        if self.jwks_url.is_none() {
            return false;
        }
        let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        match *fetched {
            Some(at) if at.elapsed() < REFETCH => false,
            _ => {
                *fetched = Some(Instant::now());
                true
            }
        }
    }

    async fn fetch(&self) -> Result<(), Error> {
        let Some(url) = &self.jwks_url else {
            return Ok(());
        };
        let unreachable = |e: String| Error::Unreachable {
            what: "the token issuer's JWKS",
            url: url.clone(),
            reason: e,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        let text = client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unreachable(e.to_string()))?
            .text()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let keys = jwks_keys(&text).map_err(unreachable)?;
        let mut held = self.by_kid.write().unwrap_or_else(|e| e.into_inner());
        *held = keys.into_iter().map(|k| (k.kid.clone(), k)).collect();
        Ok(())
    }

    /// The leaf key of an `x5c` chain that ends at one of the roots.
    fn chain_key(&self, chain: &[String]) -> Result<VerifyingKey, String> {
        let certs: Vec<CertificateDer<'static>> = chain
            .iter()
            .map(|c| STANDARD.decode(c).map(CertificateDer::from))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let (leaf, intermediates) = certs.split_first().ok_or("empty chain")?;
        let anchors: Vec<_> = self
            .roots
            .iter()
            .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
            .collect();
        let end = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
        let algorithms = rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all;
        end.verify_for_usage(
            algorithms,
            &anchors,
            intermediates,
            UnixTime::now(),
            AnyUsage,
            None,
            None,
        )
        .map_err(|e| e.to_string())?;
        certificate_key(leaf).map(|(_, key)| key)
    }
}

/// Token signing certificates carry whatever extended key usage their issuer chose.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// A certificate's public key as a verifying key, with its libtrust key id (what docker_auth
/// and Distribution put in `kid`).
fn certificate_key(der: &CertificateDer<'_>) -> Result<(String, VerifyingKey), String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    let kid = libtrust_kid(spki.raw);
    let (key, algorithms) = match spki.parsed().map_err(|e| e.to_string())? {
        PublicKey::EC(point) => {
            let data = point.data();
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let algorithm = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => Algorithm::ES256,
                Some("1.3.132.0.34") => Algorithm::ES384,
                _ => return Err("an EC key on an unsupported curve".into()),
            };
            let half = (data.len().saturating_sub(1)) / 2;
            if data.first() != Some(&4) || data.len() != 1 + 2 * half {
                return Err("a compressed EC point".into());
            }
            let x = URL_SAFE_NO_PAD.encode(&data[1..1 + half]);
            let y = URL_SAFE_NO_PAD.encode(&data[1 + half..]);
            let key = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
            (key, vec![algorithm])
        }
        PublicKey::RSA(rsa) => (
            DecodingKey::from_rsa_raw_components(rsa.modulus, rsa.exponent),
            rsa_algorithms(),
        ),
        _ => return Err("an unsupported key type (EC or RSA only)".into()),
    };
    Ok((
        kid.clone(),
        VerifyingKey {
            kid,
            key,
            algorithms,
        },
    ))
}

fn rsa_algorithms() -> Vec<Algorithm> {
    use Algorithm::{PS256, PS384, PS512, RS256, RS384, RS512};
    vec![RS256, RS384, RS512, PS256, PS384, PS512]
}

/// The libtrust key id of a DER SubjectPublicKeyInfo: the first 240 bits of its SHA-256 in
/// base32, in twelve groups of four.
pub(crate) fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    let mut bits = 0u64;
    let mut count = 0;
    let mut out = String::new();
    for &byte in &hash[..30] {
        bits = (bits << 8) | u64::from(byte);
        count += 8;
        while count >= 5 {
            count -= 5;
            out.push(ALPHABET[((bits >> count) & 31) as usize] as char);
        }
    }
    out.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(":")
}

/// The asymmetric keys of a JWKS (keys without `kid`, and symmetric ones, are skipped).
fn jwks_keys(text: &str) -> Result<Vec<VerifyingKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let algorithms = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::RSA(_) => rsa_algorithms(),
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
        keys.push(VerifyingKey {
            kid,
            key,
            algorithms,
        });
    }
    Ok(keys)
}

/// Where an external issuer's keys are, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedSource {
    /// A PEM bundle of root certificates.
    Bundle(PathBuf),
    /// A JWKS file.
    JwksFile(PathBuf),
    /// A JWKS URL.
    JwksUrl(String),
}

impl TrustedSource {
    /// Loads the keys (a URL is fetched when first needed).
    pub fn load(&self) -> Result<TrustedKeys, Error> {
        match self {
            TrustedSource::Bundle(p) => TrustedKeys::from_bundle(p),
            TrustedSource::JwksFile(p) => TrustedKeys::from_jwks_file(p),
            TrustedSource::JwksUrl(u) => Ok(TrustedKeys::from_jwks_url(u)),
        }
    }
}
