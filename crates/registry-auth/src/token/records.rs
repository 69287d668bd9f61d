//! Scoped tokens for machines (and personal access tokens of people who signed in): a name, a
//! secret that is shown once and kept only as its SHA-256, the scopes it may be granted
//! (repository patterns), an optional expiry and owner. A token is a password: `docker login -u
//! <name>` with the secret, at the token endpoint or (with HTTP Basic) on the API. Where the
//! records live is the [`TokenRecords`] store's business (the registry's storage, so that every
//! node sees a new or revoked token at once).

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::pattern::RepoGlob;
use crate::rules::Action;
use crate::Error;

/// A stored token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// The login name (`docker login -u`).
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// What it may be granted: `repository:<glob>:<actions>` or `registry:catalog:*`.
    pub scopes: Vec<String>,
    /// Unix seconds of creation.
    pub created: u64,
    /// Unix seconds after which it is refused.
    #[serde(default)]
    pub expires: Option<u64>,
    /// Whose it is (a person who signed in), if anyone's: then it stands for that person, with
    /// the person's rights, instead of having scopes of its own.
    #[serde(default)]
    pub owner: Option<String>,
    /// The owner's groups at sign-in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The owner's verified email address at sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("expires", &self.expires)
            .field("owner", &self.owner)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// Where token records are kept.
#[async_trait]
pub trait TokenRecords: Send + Sync {
    /// The record named `name`, if any.
    async fn get(&self, name: &str) -> Result<Option<TokenRecord>, Error>;
    /// Stores a record (replacing one of the same name).
    async fn put(&self, record: &TokenRecord) -> Result<(), Error>;
    /// Removes a record; whether there was one.
    async fn remove(&self, name: &str) -> Result<bool, Error>;
    /// Every record.
    async fn list(&self) -> Result<Vec<TokenRecord>, Error>;
}

/// A scope a token may be granted: a repository pattern and actions, or the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ScopePattern {
    /// `repository:<glob>:<actions>`.
    Repository {
        /// Which repositories.
        glob: RepoGlob,
        /// What on them.
        actions: Vec<Action>,
    },
    /// `registry:catalog:*`.
    Catalog,
}

impl ScopePattern {
    /// Parses `repository:team/*:pull,push`, `repository:app:*` or `registry:catalog:*`.
    pub fn parse(text: &str) -> Result<ScopePattern, Error> {
        let expected = "a token scope (repository:PATTERN:pull,push or registry:catalog:*)";
        if text == "registry:catalog:*" {
            return Ok(ScopePattern::Catalog);
        }
        let rest = text
            .strip_prefix("repository:")
            .ok_or_else(|| Error::setting(text, expected))?;
        let (glob, actions) = rest
            .rsplit_once(':')
            .ok_or_else(|| Error::setting(text, expected))?;
        let actions: Vec<Action> = match actions {
            "*" => vec![Action::Pull, Action::Push, Action::Delete],
            list => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        };
        if actions.is_empty() {
            return Err(Error::setting(text, expected));
        }
        Ok(ScopePattern::Repository {
            glob: RepoGlob::parse(glob)?,
            actions,
        })
    }

    /// Whether it allows `action` on repository `name`.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        match self {
            ScopePattern::Repository { glob, actions } => {
                actions.contains(&action) && glob.matches(name)
            }
            ScopePattern::Catalog => false,
        }
    }
}

/// A token as a verified identity: its name and what it may be granted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MachineToken {
    /// Its name.
    pub name: String,
    /// What it may be granted.
    pub scopes: Vec<ScopePattern>,
}

impl MachineToken {
    /// Whether it may do `action` on repository `name`.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        self.scopes.iter().any(|s| s.allows(action, name))
    }

    /// Whether it may list the catalog.
    pub fn allows_catalog(&self) -> bool {
        self.scopes.contains(&ScopePattern::Catalog)
    }
}

/// The hex SHA-256 of a secret.
pub fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new secret: 32 random bytes as 43 base64url characters, prefixed so that it is
/// recognizable in a leaked-secrets scan.
pub fn new_secret() -> Result<String, Error> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "rgt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

impl TokenRecord {
    /// The identity `secret` proves for this record now (`now` in Unix seconds), if it does:
    /// the secret matches (compared in constant time), the token has not expired, and its
    /// scopes parse.
    pub fn check(&self, secret: &str, now: u64) -> Option<MachineToken> {
        if !self.matches(secret) {
            return None;
        }
        self.current(now)
    }

    /// Whether `secret` is this token's (compared in constant time).
    pub fn matches(&self, secret: &str) -> bool {
        let given = secret_hash(secret);
        given.as_bytes().ct_eq(self.secret_sha256.as_bytes()).into()
    }

    /// The person this token stands for, if it is a personal access token that has not
    /// expired.
    pub fn person(&self, now: u64) -> Option<crate::Person> {
        let owner = self.owner.as_ref()?;
        if self.expires.is_some_and(|e| e <= now) {
            return None;
        }
        Some(crate::Person {
            name: owner.clone(),
            email: self.email.clone(),
            groups: self.groups.clone(),
            token: self.name.clone(),
        })
    }

    /// The identity of this record now, without its secret (a refresh token stands for the
    /// secret), if it has not expired and its scopes parse.
    pub fn current(&self, now: u64) -> Option<MachineToken> {
        if self.expires.is_some_and(|e| e <= now) {
            return None;
        }
        let scopes = self
            .scopes
            .iter()
            .map(|s| ScopePattern::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(MachineToken {
            name: self.name.clone(),
            scopes,
        })
    }
}

/// Whether `name` may name a token (what `docker login -u` takes, and a storage key).
pub fn check_token_name(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::setting(
            name,
            "a token name (letters, digits, '.', '_' and '-', at most 64)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(secret: &str, scopes: &[&str], expires: Option<u64>) -> TokenRecord {
        TokenRecord {
            name: "ci-app".into(),
            secret_sha256: secret_hash(secret),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            created: 1,
            expires,
            owner: None,
            groups: Vec::new(),
            email: None,
        }
    }

    #[test]
    fn secrets_scopes_and_expiry() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with("rgt_") && secret.len() == 47, "{secret}");
        let r = record(
            &secret,
            &["repository:app/*:pull,push", "registry:catalog:*"],
            Some(100),
        );
        let token = r.check(&secret, 50).unwrap();
        assert!(token.allows(Action::Push, "app/web"));
        assert!(!token.allows(Action::Delete, "app/web"));
        assert!(!token.allows(Action::Pull, "other"));
        assert!(token.allows_catalog());
        assert!(r.check("wrong", 50).is_none());
        assert!(r.check(&secret, 100).is_none(), "expired");
        assert!(!format!("{r:?}").contains(&r.secret_sha256));
        let all = record(&secret, &["repository:app:*"], None);
        assert!(all.check(&secret, 1).unwrap().allows(Action::Delete, "app"));
    }

    #[test]
    fn bad_scopes_and_names() {
        for bad in [
            "",
            "repository:app",
            "repo:app:pull",
            "repository:app:fly",
            "repository::pull",
            "repository:app:",
        ] {
            assert!(ScopePattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(check_token_name("ci-app_1.x").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"a".repeat(65)] {
            assert!(check_token_name(bad).is_err(), "{bad:?}");
        }
    }
}
