//! Who is signed in to the web interface, and forms only its own pages can send.
//!
//! - A **session** is a cookie holding the subject, an expiry and a random id, sealed with
//!   HMAC-SHA-256 under the instance's session key: nodes that share the key (a file of the
//!   instance's configuration) accept each other's sessions without shared state. The expiry
//!   is the server's, inside the seal (the cookie's `Max-Age` only tidies the browser); who the
//!   subject is, and whether they still exist, is asked of the guard on every request, so a
//!   removed user or a revoked token ends their sessions at once. Signing out revokes the id on
//!   the node that served it (kept until the session would have expired).
//! - A **CSRF token** is the HMAC of a random per-browser cookie (`HttpOnly`,
//!   `SameSite=Strict`): a form carries it, and a state-changing request whose field is not
//!   the HMAC of its own cookie is refused. Another site can neither read the cookie nor
//!   compute the HMAC.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "registry_ui_session";
/// The per-browser cookie CSRF tokens are bound to.
pub(crate) const BROWSER_COOKIE: &str = "registry_ui_browser";

/// A signed-in session, as sealed in its cookie.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Session {
    /// Who signed in (an htpasswd user, a scoped token's name, or a person's name).
    pub sub: String,
    /// When it ends, in seconds since the epoch.
    pub exp: u64,
    /// Random; what signing out revokes.
    pub id: String,
    /// For a person who signed in with OpenID Connect: what the provider said of them (their
    /// groups give them rights; sign-in must still admit them on every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<SignedInPerson>,
}

/// What the provider said of a person at sign-in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SignedInPerson {
    pub email: Option<String>,
    pub groups: Vec<String>,
}

/// Seals and opens sessions and CSRF tokens under one key.
pub(crate) struct Sessions {
    key: hmac::Key,
    lifetime: Duration,
    /// Revoked session ids, with their expiry (dropped after it).
    revoked: Mutex<HashMap<String, u64>>,
}

impl Sessions {
    /// Sessions sealed with `secret` (at least 32 bytes), lasting `lifetime`.
    pub(crate) fn new(secret: &[u8], lifetime: Duration) -> Sessions {
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime,
            revoked: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn mac(&self, purpose: &str, text: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(purpose.as_bytes());
        context.update(b"\0");
        context.update(text);
        context.sign()
    }

    /// A new session of `subject` (a person's, with `person`), and its cookie value.
    pub(crate) fn seal(&self, subject: &str, person: Option<SignedInPerson>) -> (Session, String) {
        let session = Session {
            sub: subject.to_owned(),
            exp: now() + self.lifetime.as_secs(),
            id: random_hex(16),
            person,
        };
        let body = serde_json::to_vec(&session).expect("plain data serializes");
        let tag = self.mac("session", &body);
        let value = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        (session, value)
    }

    /// The session a cookie value holds, if it is sealed with this key, not expired and not
    /// revoked.
    pub(crate) fn open(&self, value: &str) -> Option<Session> {
        let (body, tag) = value.split_once('.')?;
        let body = URL_SAFE_NO_PAD.decode(body).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // (`mac`'s input for purpose "session"; aws-lc compares the tags in constant time.)
        hmac::verify(&self.key, &[b"session\0".as_slice(), &body].concat(), &tag).ok()?;
        let session: Session = serde_json::from_slice(&body).ok()?;
        let revoked = self.revoked.lock().expect("not poisoned");
        (session.exp > now() && !revoked.contains_key(&session.id)).then_some(session)
    }

    /// Ends `session` on this node.
    pub(crate) fn revoke(&self, session: &Session) {
        let mut revoked = self.revoked.lock().expect("not poisoned");
        let now = now();
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(session.id.clone(), session.exp);
    }

    /// The CSRF token of forms shown to the browser holding cookie `browser`.
    pub(crate) fn csrf(&self, browser: &str) -> String {
        hex(&self.mac("csrf", browser.as_bytes()).as_ref()[..16])
    }

    /// Whether `given` is the CSRF token of `browser` (in constant time).
    pub(crate) fn csrf_matches(&self, browser: &str, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        let want = self.csrf(browser);
        want.len() == given.len() && bool::from(want.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `n` random bytes as hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the system has randomness");
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `value` is a browser cookie this module made (32 hex digits).
pub(crate) fn is_browser_id(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_only_when_sealed_here_current_and_not_revoked() {
        let sessions = Sessions::new(&[7u8; 32], Duration::from_secs(60));
        let (session, value) = sessions.seal("ann", None);
        assert_eq!(sessions.open(&value), Some(session.clone()));
        // Another key, a changed body, a changed tag.
        let other = Sessions::new(&[8u8; 32], Duration::from_secs(60));
        assert_eq!(other.open(&value), None);
        let (body, tag) = value.split_once('.').unwrap();
        let forged = serde_json::to_vec(&Session {
            sub: "admin".into(),
            ..session.clone()
        })
        .unwrap();
        assert_eq!(
            sessions.open(&format!("{}.{tag}", URL_SAFE_NO_PAD.encode(forged))),
            None
        );
        assert_eq!(sessions.open(&format!("{body}.AAAA")), None);
        assert_eq!(sessions.open("garbage"), None);
        sessions.revoke(&session);
        assert_eq!(sessions.open(&value), None);
        // Expired.
        let short = Sessions::new(&[7u8; 32], Duration::ZERO);
        let (_, value) = short.seal("ann", None);
        assert_eq!(short.open(&value), None);
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_browser() {
        let sessions = Sessions::new(&[7u8; 32], Duration::from_secs(60));
        let (a, b) = (random_hex(16), random_hex(16));
        assert!(is_browser_id(&a));
        let token = sessions.csrf(&a);
        assert!(sessions.csrf_matches(&a, &token));
        assert!(!sessions.csrf_matches(&b, &token));
        assert!(!sessions.csrf_matches(&a, ""));
    }
}
