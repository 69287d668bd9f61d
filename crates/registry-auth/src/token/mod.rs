//! Docker Registry token authentication (the Bearer flow of the Docker token specification):
//! [`scope`]s, the JWTs a token service issues ([`TokenIssuer`]) and the API verifies
//! ([`TokenVerifier`]).
//!
//! A token is a JWT signed with ES256 (our own keys, [`keys`]) or, from an external issuer, any
//! asymmetric algorithm its key allows; its claims are `iss`, `sub`, `aud` (the registry's
//! service name), `exp`, `nbf`, `iat`, `jti` and `access` (what it grants). Verification checks
//! the signature with the key the header names (by `kid`, or an `x5c` chain to a trusted root),
//! only with that key's own algorithm (so `alg: none` and HMAC with a public key are refused),
//! then issuer, audience and times (60 s of clock skew); anything else is refused.

pub mod keys;
pub mod records;
pub mod scope;
mod trusted;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

pub use keys::{KeyRing, SigningKey, VerifyingKey};
pub use scope::Scope;
pub use trusted::{TrustedKeys, TrustedSource};

use crate::Error;

/// Clock skew allowed when checking `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(60);

/// The longest token looked at (a JWT with a certificate chain fits in a few kilobytes).
const MAX_TOKEN: usize = 16 * 1024;

/// The claims of a registry token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued it.
    pub iss: String,
    /// Whom it is for (a user, a machine token's name).
    pub sub: String,
    /// The service it is for (one name, or a list from issuers that send one).
    pub aud: Audience,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// A unique id.
    pub jti: String,
    /// What it grants.
    #[serde(default)]
    pub access: Vec<Scope>,
}

/// `aud`: one name or several.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A token as the token endpoint answers it.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// Seconds it is valid for.
    pub expires_in: u64,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
}

/// Now, in Unix seconds (what token times are).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Issues tokens signed with the instance's current key.
#[derive(Debug)]
pub struct TokenIssuer {
    keys: Arc<KeyRing>,
    issuer: String,
    lifetime: Duration,
}

impl TokenIssuer {
    /// An issuer named `issuer` signing with the current key of `keys`; tokens live `lifetime`.
    pub fn new(keys: Arc<KeyRing>, issuer: &str, lifetime: Duration) -> TokenIssuer {
        TokenIssuer {
            keys,
            issuer: issuer.to_owned(),
            lifetime,
        }
    }

    /// How long its tokens live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Its issuer name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Its keys.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// A token for `subject` at `service` granting `access`, living the issuer's lifetime.
    pub fn issue(
        &self,
        subject: &str,
        service: &str,
        access: Vec<Scope>,
    ) -> Result<IssuedToken, Error> {
        self.issue_for(subject, service, access, self.lifetime)
    }

    /// A token living `lifetime` (refresh tokens live longer than access tokens).
    pub fn issue_for(
        &self,
        subject: &str,
        service: &str,
        access: Vec<Scope>,
        lifetime: Duration,
    ) -> Result<IssuedToken, Error> {
        let now = unix_now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: Audience::One(service.to_owned()),
            exp: now + lifetime.as_secs(),
            // Clocks of nodes and clients differ a little: valid from a moment ago.
            nbf: now.saturating_sub(LEEWAY.as_secs()),
            iat: now,
            jti: random_id()?,
            access,
        };
        let key = self.keys.current();
        let header = Header {
            kid: Some(key.kid().to_owned()),
            typ: Some("JWT".to_owned()),
            ..Header::new(Algorithm::ES256)
        };
        let token = jsonwebtoken::encode(&header, &claims, key.encoding())
            .map_err(|e| Error::Key(format!("signing a token failed: {e}")))?;
        Ok(IssuedToken {
            token,
            expires_in: lifetime.as_secs(),
            issued_at: rfc3339(now),
        })
    }
}

/// A small signed document: what [`TokenIssuer::seal`] signs.
#[derive(Serialize, Deserialize)]
struct Sealed<T> {
    iss: String,
    aud: String,
    exp: u64,
    iat: u64,
    data: T,
}

impl TokenIssuer {
    /// Signs `data` for `audience` (a purpose, such as a sign-in in progress or a session),
    /// valid for `lifetime`: the HTTP layer's tamper-proof cookies, verifiable on every node
    /// that has the keys.
    pub fn seal<T: Serialize>(
        &self,
        audience: &str,
        lifetime: Duration,
        data: &T,
    ) -> Result<String, Error> {
        let now = unix_now();
        let sealed = Sealed {
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            exp: now + lifetime.as_secs(),
            iat: now,
            data,
        };
        let key = self.keys.current();
        let header = Header {
            kid: Some(key.kid().to_owned()),
            ..Header::new(Algorithm::ES256)
        };
        jsonwebtoken::encode(&header, &sealed, key.encoding())
            .map_err(|e| Error::Key(format!("signing failed: {e}")))
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339).
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Whom it was issued for.
    pub subject: String,
    /// What it grants.
    pub access: Vec<Scope>,
    /// Its unique id.
    pub id: String,
}

/// Where the keys that verify tokens come from.
enum Keys {
    /// The instance's own keys.
    Own(Arc<KeyRing>),
    /// An external issuer's keys (a certificate bundle or a JWKS).
    Trusted(TrustedKeys),
}

/// Verifies tokens for one service (see the module documentation). A verified token is
/// remembered (by a SHA-256 of it, until it expires but at most [`REMEMBER`]), so a client that
/// reuses its token, as docker does for a whole pull, pays for one signature check (about
/// 100 µs for ES256) rather than one per request.
pub struct TokenVerifier {
    issuer: String,
    service: String,
    keys: Keys,
    verified: std::sync::Mutex<HashMap<[u8; 32], (u64, Verified)>>,
}

/// How long a verified token is remembered at most (also bounds how long a key removed from a
/// JWKS keeps its tokens working).
pub const REMEMBER: Duration = Duration::from_secs(60);
/// The most tokens remembered; beyond it, expired ones are dropped, then all.
const REMEMBERED: usize = 10_000;

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenVerifier({}, {})", self.issuer, self.service)
    }
}

impl TokenVerifier {
    /// Verifies tokens of our own `issuer` for `service`, signed with the current or the
    /// previous key of `keys`.
    pub fn own(issuer: &str, service: &str, keys: Arc<KeyRing>) -> TokenVerifier {
        TokenVerifier {
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            keys: Keys::Own(keys),
            verified: Default::default(),
        }
    }

    /// Verifies tokens of an external `issuer` for `service` with `keys`.
    pub fn external(issuer: &str, service: &str, keys: TrustedKeys) -> TokenVerifier {
        TokenVerifier {
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            keys: Keys::Trusted(keys),
            verified: Default::default(),
        }
    }

    /// The service name tokens must be for.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The issuer tokens must come from.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether it verifies our own tokens (rather than an external issuer's).
    pub fn is_own(&self) -> bool {
        matches!(self.keys, Keys::Own(_))
    }

    /// The ids of the keys it trusts (for `registry check`).
    pub fn key_ids(&self) -> Vec<String> {
        match &self.keys {
            Keys::Own(keys) => keys.key_ids(),
            Keys::Trusted(t) => t.key_ids(),
        }
    }

    /// Verifies a token; the error says why it is refused (for `error_description`).
    pub async fn verify(&self, token: &str) -> Result<Verified, Error> {
        self.verify_for(token, &self.service).await
    }

    /// What [`TokenIssuer::seal`] signed for `audience`, if it is ours, unexpired and for that
    /// purpose.
    pub async fn unseal<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, Error> {
        let invalid = |why: &str| Error::InvalidToken(why.to_owned());
        if token.len() > MAX_TOKEN {
            return Err(invalid("too long"));
        }
        let Keys::Own(keys) = &self.keys else {
            return Err(invalid("not ours"));
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| keys.find(kid))
            .ok_or_else(|| invalid("unknown key"))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = 5;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let sealed = jsonwebtoken::decode::<Sealed<T>>(token, &key.key, &validation)
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(sealed.claims.data)
    }

    /// Verifies a token meant for `audience` rather than the service (refresh tokens are for
    /// the token endpoint, so they are never access tokens on the API).
    pub async fn verify_for(&self, token: &str, audience: &str) -> Result<Verified, Error> {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(audience.as_bytes());
        h.update([0]);
        h.update(token.as_bytes());
        let id: [u8; 32] = h.finalize().into();
        let now = unix_now();
        {
            let remembered = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((until, v)) = remembered.get(&id) {
                if now < *until {
                    return Ok(v.clone());
                }
            }
        }
        let (verified, exp) = self.check(token, audience).await?;
        let until = (exp + LEEWAY.as_secs()).min(now + REMEMBER.as_secs());
        let mut remembered = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBERED {
            remembered.retain(|_, (u, _)| now < *u);
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(id, (until, verified.clone()));
        Ok(verified)
    }

    /// The signature and claims check itself; the token's `exp` with what it says.
    async fn check(&self, token: &str, audience: &str) -> Result<(Verified, u64), Error> {
        let invalid = |why: &str| Error::InvalidToken(why.to_owned());
        if token.len() > MAX_TOKEN {
            return Err(invalid("the token is too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let key = match &self.keys {
            Keys::Own(keys) => header
                .kid
                .as_ref()
                .and_then(|kid| keys.find(kid))
                .ok_or_else(|| invalid("the token's key is unknown"))?,
            Keys::Trusted(trusted) => trusted.key_for(&header).await?,
        };
        let first = *key
            .algorithms
            .first()
            .ok_or_else(|| invalid("the token's key has no algorithm"))?;
        let mut validation = Validation::new(first);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "the token has expired",
                K::ImmatureSignature => "the token is not valid yet",
                K::InvalidAudience => "the token is for another service",
                K::InvalidIssuer => "the token is from another issuer",
                K::InvalidSignature => "the token's signature is wrong",
                K::InvalidAlgorithm => "the token's algorithm is not its key's",
                K::MissingRequiredClaim(_) => "the token lacks a required claim",
                _ => "malformed token",
            })
        })?;
        let exp = data.claims.exp;
        Ok((
            Verified {
                subject: data.claims.sub,
                access: data.claims.access,
                id: data.claims.jti,
            },
            exp,
        ))
    }
}

#[cfg(test)]
mod tests;
