//! OpenID Connect sign-in for people: the authorization-code flow with PKCE (S256), `state` and
//! `nonce`, against the provider's discovery document (cached for an hour) and JWKS (fetched
//! when first needed and again for an unknown `kid`, at most every 30 s). The ID token's
//! signature (only with its key's algorithm), issuer, audience (`azp` too when there are
//! several), expiry and nonce are checked; then who may enter is decided by [`Admission`] from
//! the verified email address and the groups claim. The provider's tokens are not kept: a
//! sign-in yields a [`Person`], nothing else.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Validation;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::token::TrustedKeys;
use crate::{Error, Person};

/// How long a discovery document is trusted before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// How long a request to the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// An OpenID Connect provider as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// The issuer URL (its discovery document is at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The registry's client id at the provider.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// The scopes asked for (`openid` is always asked).
    pub scopes: Vec<String>,
    /// The claim that lists a person's groups.
    pub groups_claim: String,
    /// Who may sign in.
    pub admission: Admission,
    /// How long a personal access token made at sign-in lives.
    pub token_lifetime: Duration,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("admission", &self.admission)
            .field("token_lifetime", &self.token_lifetime)
            .finish_non_exhaustive()
    }
}

/// Who may sign in: anyone the provider vouches for when every list is empty; else a person
/// whose verified email address is listed, whose address is at a listed domain, or who is in a
/// listed group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// Email addresses (compared without regard to case).
    pub emails: Vec<String>,
    /// Domains of email addresses (`example.com`).
    pub domains: Vec<String>,
    /// Groups.
    pub groups: Vec<String>,
}

impl Admission {
    /// Whether `person` may enter (by their verified email address or their groups).
    pub fn admits(&self, person: &Person) -> bool {
        if self.emails.is_empty() && self.domains.is_empty() && self.groups.is_empty() {
            return true;
        }
        let email = person.email.as_deref().map(str::to_ascii_lowercase);
        let domain = email
            .as_deref()
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d);
        email
            .as_deref()
            .is_some_and(|e| self.emails.iter().any(|x| x.eq_ignore_ascii_case(e)))
            || domain.is_some_and(|d| self.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
            || self.groups.iter().any(|g| person.groups.contains(g))
    }
}

/// The provider's discovery document (what the flow needs of it).
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    /// Its issuer identifier.
    pub issuer: String,
    /// Where people are sent to sign in.
    pub authorization_endpoint: String,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// Its keys.
    pub jwks_uri: String,
    /// Where the claims the ID token leaves out are (many providers put only `sub` in it).
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

/// What a sign-in in progress must remember until the provider sends the person back (the
/// HTTP layer keeps it in a signed cookie): the `state`, the `nonce` and the PKCE verifier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginState {
    /// Echoed back by the provider; must match.
    pub state: String,
    /// Must come back inside the ID token.
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
}

/// A provider, with its discovery document and keys cached.
pub struct Provider {
    settings: OidcSettings,
    http: reqwest::Client,
    discovery: Mutex<Option<(Instant, Arc<Discovery>)>>,
    keys: Mutex<Option<(String, Arc<TrustedKeys>)>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({})", self.settings.issuer)
    }
}

fn random_text() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Compares two texts in constant time (for state and nonce).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: serde_json::Value,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Provider {
    /// A provider as configured (nothing is fetched yet).
    pub fn new(settings: OidcSettings) -> Result<Provider, Error> {
        let http = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Unreachable {
                what: "the identity provider",
                url: settings.issuer.clone(),
                reason: e.to_string(),
            })?;
        Ok(Provider {
            settings,
            http,
            discovery: Mutex::new(None),
            keys: Mutex::new(None),
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    fn unreachable(&self, url: &str, reason: impl std::fmt::Display) -> Error {
        Error::Unreachable {
            what: "the identity provider",
            url: url.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The discovery document, from the cache when fresh.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, Error> {
        if let Some((at, d)) = &*self.discovery.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < DISCOVERY_TTL {
                return Ok(d.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let document: Discovery = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| self.unreachable(&url, e))?
            .json()
            .await
            .map_err(|e| self.unreachable(&url, format!("not a discovery document: {e}")))?;
        // OpenID Connect Discovery §4.3: the document must be the issuer's own.
        if document.issuer.trim_end_matches('/') != self.settings.issuer.trim_end_matches('/') {
            return Err(self.unreachable(
                &url,
                format!(
                    "its issuer is {:?}, not the one configured",
                    document.issuer
                ),
            ));
        }
        let document = Arc::new(document);
        *self.discovery.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), document.clone()));
        Ok(document)
    }

    fn keys(&self, jwks_uri: &str) -> Arc<TrustedKeys> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match &*keys {
            Some((uri, k)) if uri == jwks_uri => k.clone(),
            _ => {
                let k = Arc::new(TrustedKeys::from_jwks_url(jwks_uri));
                *keys = Some((jwks_uri.to_owned(), k.clone()));
                k
            }
        }
    }

    /// Starts a sign-in: where to send the person, and what to remember until they are back.
    pub async fn start(&self, redirect_uri: &str) -> Result<(String, LoginState), Error> {
        let discovery = self.discovery().await?;
        let state = LoginState {
            state: random_text()?,
            nonce: random_text()?,
            verifier: random_text()?,
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(state.verifier.as_bytes()));
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(
            self.settings
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .cloned(),
        );
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state.state)
            .append_pair("nonce", &state.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{separator}{query}", discovery.authorization_endpoint);
        Ok((url, state))
    }

    /// Finishes a sign-in: `returned_state` must be the remembered one; the code is exchanged
    /// (with the PKCE verifier) and the ID token verified; the person must be admitted.
    pub async fn finish(
        &self,
        remembered: &LoginState,
        returned_state: &str,
        code: &str,
        redirect_uri: &str,
    ) -> Result<SignedIn, Error> {
        if !same(&remembered.state, returned_state) {
            return Err(Error::SignIn(
                "the sign-in's state does not match (start again)".into(),
            ));
        }
        let discovery = self.discovery().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", remembered.verifier.as_str()),
        ];
        // client_secret_basic: both parts form-encoded first (RFC 6749 §2.3.1).
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let response = self
            .http
            .post(&discovery.token_endpoint)
            .basic_auth(
                encode(&self.settings.client_id),
                Some(encode(&self.settings.client_secret)),
            )
            .form(&form)
            .send()
            .await
            .map_err(|e| self.unreachable(&discovery.token_endpoint, e))?;
        let status = response.status();
        let answer: TokenAnswer = response.json().await.map_err(|e| {
            self.unreachable(
                &discovery.token_endpoint,
                format!("answered {status} without JSON: {e}"),
            )
        })?;
        if let Some(error) = answer.error {
            let description = answer.error_description.unwrap_or_default();
            return Err(Error::SignIn(format!(
                "the identity provider refused the sign-in: {error}{}{description}",
                if description.is_empty() { "" } else { ": " }
            )));
        }
        let id_token = answer
            .id_token
            .ok_or_else(|| Error::SignIn("the identity provider sent no ID token".into()))?;
        let mut claims = self
            .verify_id_token(&discovery, &id_token, &remembered.nonce)
            .await?;
        if let (Some(endpoint), Some(access)) = (&discovery.userinfo_endpoint, &answer.access_token)
        {
            self.add_userinfo(endpoint, access, &mut claims).await?;
        }
        let person = self.person(claims);
        if !self.settings.admission.admits(&person) {
            return Err(Error::SignIn(format!(
                "{} may not use this registry",
                crate::Escaped(&person.name)
            )));
        }
        Ok(SignedIn { person })
    }

    async fn verify_id_token(
        &self,
        discovery: &Discovery,
        token: &str,
        nonce: &str,
    ) -> Result<IdClaims, Error> {
        let invalid = |why: String| Error::SignIn(format!("the ID token is refused: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed".into()))?;
        let key = self
            .keys(&discovery.jwks_uri)
            .key_for(&header)
            .await
            .map_err(|e| match e {
                Error::Unreachable { .. } => e,
                other => invalid(other.to_string()),
            })?;
        let first = *key
            .algorithms
            .first()
            .ok_or_else(|| invalid("its key has no algorithm".into()))?;
        let mut validation = Validation::new(first);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = crate::token::LEEWAY.as_secs();
        validation.set_issuer(&[&discovery.issuer]);
        validation.set_audience(&[&self.settings.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key.key, &validation)
            .map_err(|e| invalid(e.to_string()))?
            .claims;
        if !claims.nonce.as_deref().is_some_and(|n| same(n, nonce)) {
            return Err(invalid("its nonce is not this sign-in's".into()));
        }
        let audiences = claims.aud.as_array().map_or(1, Vec::len);
        if audiences > 1 && claims.azp.as_deref() != Some(self.settings.client_id.as_str()) {
            return Err(invalid("it was issued to another client (azp)".into()));
        }
        Ok(claims)
    }

    /// The userinfo endpoint's claims, for what the ID token left out (OpenID Connect Core
    /// §5.3): its `sub` must be the ID token's.
    async fn add_userinfo(
        &self,
        endpoint: &str,
        access_token: &str,
        claims: &mut IdClaims,
    ) -> Result<(), Error> {
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| self.unreachable(endpoint, e))?;
        let json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        if !json {
            return Ok(()); // a signed userinfo JWT: the ID token's claims must do
        }
        let info: serde_json::Map<String, serde_json::Value> = response
            .json()
            .await
            .map_err(|e| self.unreachable(endpoint, format!("not JSON: {e}")))?;
        if info.get("sub").and_then(|s| s.as_str()) != Some(claims.sub.as_str()) {
            return Err(Error::SignIn(
                "the provider's userinfo is about someone else".into(),
            ));
        }
        if claims.email.is_none() {
            if let Some(email) = info.get("email").and_then(|e| e.as_str()) {
                claims.email = Some(email.to_owned());
                claims.email_verified = info.get("email_verified").cloned();
            }
        }
        for (k, v) in info {
            claims.rest.entry(k).or_insert(v);
        }
        Ok(())
    }

    /// The person the claims describe.
    fn person(&self, claims: IdClaims) -> Person {
        let verified = match &claims.email_verified {
            None => true,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s == "true",
            Some(_) => false,
        };
        let email = claims
            .email
            .filter(|e| verified && e.contains('@'))
            .map(|e| e.to_ascii_lowercase());
        let name = email.clone().unwrap_or_else(|| claims.sub.clone());
        let groups = match claims.rest.get(&self.settings.groups_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Person {
            name,
            email,
            groups,
            token: String::new(),
        }
    }
}

/// A finished sign-in.
#[derive(Clone, Debug)]
pub struct SignedIn {
    /// Who signed in (no personal access token yet).
    pub person: Person,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str, groups: &[&str]) -> Person {
        Person {
            name: name.into(),
            email: name.contains('@').then(|| name.to_owned()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            token: String::new(),
        }
    }

    #[test]
    fn admission() {
        let everyone = Admission::default();
        assert!(everyone.admits(&person("anyone", &[])));
        let some = Admission {
            emails: vec!["Ann@Example.com".into()],
            domains: vec!["corp.example".into()],
            groups: vec!["registry".into()],
        };
        assert!(some.admits(&person("ann@example.com", &[])));
        assert!(some.admits(&person("bob@corp.example", &[])));
        assert!(!some.admits(&person("bob@evil.corp.example.org", &[])));
        assert!(some.admits(&person("subject-123", &["registry"])));
        assert!(!some.admits(&person("subject-123", &["other"])));
        assert!(!some.admits(&person("eve@example.com", &[])));
        // A subject is not an email address, whatever it looks like.
        let domain_only = Admission {
            domains: vec!["example.com".into()],
            ..Admission::default()
        };
        let unverified = Person {
            email: None,
            ..person("eve@example.com", &[])
        };
        assert!(!domain_only.admits(&unverified));
    }

    #[test]
    fn state_comparison() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        let a = random_text().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_text().unwrap());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = OidcSettings {
            issuer: "https://id.example.com".into(),
            client_id: "registry".into(),
            client_secret: "hush".into(),
            scopes: vec![],
            groups_claim: "groups".into(),
            admission: Admission::default(),
            token_lifetime: Duration::from_secs(60),
        };
        assert!(!format!("{s:?}").contains("hush"));
    }
}
