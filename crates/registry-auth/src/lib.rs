//! `registry-auth`: who a request comes from and what it may do. This crate knows nothing of
//! storage or HTTP frameworks: [`Guard`] admits addresses ([`ip`]), authenticates client
//! certificates ([`tls`]), Basic credentials ([`basic`], [`htpasswd`], with the [`brake`]) and
//! Bearer tokens ([`token`]), signs people in with OpenID Connect ([`oidc`]), and authorizes
//! actions ([`rules`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod basic;
pub mod brake;
mod error;
pub mod escape;
pub mod guard;
pub mod htpasswd;
pub mod ip;
pub mod oidc;
pub mod pattern;
pub mod rules;
pub mod tls;
pub mod token;
pub mod watch;

use std::fmt;
use std::sync::Arc;

pub use error::Error;

/// The `tracing` target of audit lines (see `registry_http::audit`); failed logins are
/// written to it here.
pub const AUDIT_TARGET: &str = "audit";
pub use escape::Escaped;
pub use guard::{BearerError, Challenge, Guard, GuardSettings, Refusal, TokenKeys, TokenSettings};
pub use rules::{Action, Anonymous, Policy, Rule};

/// Who a request comes from, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// No credentials were presented.
    Anonymous,
    /// A user authenticated by password.
    User(String),
    /// A client authenticated by a TLS certificate, named by its subject.
    Certificate(String),
    /// A Bearer token: whom it was issued for and what it grants.
    Token(Arc<Grant>),
    /// A scoped token used as a password: its name and what it may be granted.
    Machine(Arc<token::records::MachineToken>),
    /// A person who signed in with OpenID Connect, by a personal access token.
    Person(Arc<Person>),
}

/// A person who signed in with OpenID Connect: what the provider said of them at sign-in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Person {
    /// Their name in rules and logs: the verified email address, else the provider's subject.
    pub name: String,
    /// Their verified email address, if the provider gave one.
    pub email: Option<String>,
    /// Their groups (for `[[access]]` rules naming groups).
    pub groups: Vec<String>,
    /// The personal access token they came with.
    pub token: String,
}

/// What a verified Bearer token grants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Whom it was issued for.
    pub subject: String,
    /// What it grants.
    pub access: Vec<token::Scope>,
}

impl Identity {
    /// The name a token issued to this identity is for (`sub`).
    pub fn subject(&self) -> &str {
        match self {
            Identity::Anonymous => "",
            Identity::User(u) | Identity::Certificate(u) => u,
            Identity::Token(g) => &g.subject,
            Identity::Machine(t) => &t.name,
            Identity::Person(p) => &p.name,
        }
    }

    /// The name this identity logs in with (what a refresh token stands for): the user, the
    /// scoped token, or a person's personal access token.
    pub fn login_name(&self) -> &str {
        match self {
            Identity::Person(p) => &p.token,
            other => other.subject(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::User(u) => write!(f, "user {}", Escaped(u)),
            Identity::Certificate(c) => write!(f, "certificate {}", Escaped(c)),
            Identity::Token(g) => write!(f, "a token of {}", Escaped(&g.subject)),
            Identity::Machine(t) => write!(f, "token {}", Escaped(&t.name)),
            Identity::Person(p) => write!(f, "{} by {}", Escaped(&p.name), Escaped(&p.token)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(Identity::User("ann".into()).to_string(), "user ann");
        assert_eq!(Identity::Anonymous.to_string(), "anonymous");
        assert_eq!(
            Identity::Certificate("a\nb".into()).to_string(),
            "certificate a\\nb"
        );
    }
}
