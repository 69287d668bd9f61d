//! `registry-auth`: who a request comes from and what it may do. This crate knows nothing of
//! storage or HTTP frameworks: [`Guard`] admits addresses ([`ip`]), authenticates client
//! certificates ([`tls`]) and Basic credentials ([`basic`], [`htpasswd`], with the [`brake`]),
//! and authorizes actions ([`rules`]).

#![warn(missing_docs)]

pub mod basic;
pub mod brake;
mod error;
pub mod escape;
pub mod guard;
pub mod htpasswd;
pub mod ip;
pub mod pattern;
pub mod rules;
pub mod tls;
pub mod watch;

use std::fmt;

pub use error::Error;
pub use escape::Escaped;
pub use guard::{Guard, GuardSettings, Refusal};
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
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::User(u) => write!(f, "user {}", Escaped(u)),
            Identity::Certificate(c) => write!(f, "certificate {}", Escaped(c)),
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
