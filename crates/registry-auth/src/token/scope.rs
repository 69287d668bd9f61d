//! Scopes of the Docker token protocol: what a client asks for (`repository:team/app:pull,push`,
//! `registry:catalog:*`) and what a token grants (the JWT's `access` claim). Parsing is total:
//! any text gives a scope or an error naming it; granting is an intersection, never more than
//! was asked.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rules::Action;
use crate::Error;

/// One scope: a resource (type and name) and actions on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// A repository name, or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, or `*` (every action on the resource).
    pub actions: Vec<String>,
}

/// The longest scope text taken (a repository name is at most 255 characters).
const MAX_SCOPE: usize = 1024;

impl FromStr for Scope {
    type Err = Error;

    /// Parses `type:name:actions`; the name may hold `:` (a registry host with a port).
    fn from_str(s: &str) -> Result<Scope, Error> {
        let invalid = || {
            Error::setting(
                &s.chars().take(100).collect::<String>(),
                "a scope (repository:NAME:pull,push)",
            )
        };
        if s.len() > MAX_SCOPE {
            return Err(invalid());
        }
        let (resource_type, rest) = s.split_once(':').ok_or_else(invalid)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(invalid)?;
        let resource_type = match resource_type.split_once('(') {
            // `repository(plugin)`: a resource class, which changes nothing here.
            Some((t, class)) if class.ends_with(')') => t,
            _ => resource_type,
        };
        let token_char = |c: char| c.is_ascii_alphanumeric() || "._-/*".contains(c);
        let valid = !resource_type.is_empty()
            && resource_type.chars().all(|c| c.is_ascii_lowercase())
            && !name.is_empty()
            && name.chars().all(|c| token_char(c) || c == ':');
        if !valid {
            return Err(invalid());
        }
        let mut actions: Vec<String> = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if actions
            .iter()
            .any(|a| !a.chars().all(|c| c.is_ascii_lowercase() || c == '*'))
        {
            return Err(invalid());
        }
        actions.sort();
        actions.dedup();
        Ok(Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.resource_type,
            self.name,
            self.actions.join(",")
        )
    }
}

impl Scope {
    /// `repository:<name>:<actions>`.
    pub fn repository(name: &str, actions: &[Action]) -> Scope {
        let mut actions: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        actions.sort();
        actions.dedup();
        Scope {
            resource_type: "repository".to_owned(),
            name: name.to_owned(),
            actions,
        }
    }

    /// `registry:catalog:*`, what listing the catalog takes.
    pub fn catalog() -> Scope {
        Scope {
            resource_type: "registry".to_owned(),
            name: "catalog".to_owned(),
            actions: vec!["*".to_owned()],
        }
    }

    /// Whether this (granted) scope allows `action` on repository `name`.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        self.resource_type == "repository"
            && self.name == name
            && self
                .actions
                .iter()
                .any(|a| a == "*" || *a == action.to_string())
    }

    /// Whether this (granted) scope allows listing the catalog.
    pub fn allows_catalog(&self) -> bool {
        self.resource_type == "registry"
            && self.name == "catalog"
            && self.actions.iter().any(|a| a == "*")
    }
}

/// The scopes a token request asks for: each `scope` parameter may hold several, separated by
/// spaces (RFC 6749), and the same resource may be asked for several times (its actions are
/// merged).
pub fn parse_requested<S: AsRef<str>>(params: &[S]) -> Result<Vec<Scope>, Error> {
    let mut merged: Vec<Scope> = Vec::new();
    for param in params {
        for text in param.as_ref().split(' ').filter(|t| !t.is_empty()) {
            let scope: Scope = text.parse()?;
            match merged
                .iter_mut()
                .find(|s| s.resource_type == scope.resource_type && s.name == scope.name)
            {
                Some(s) => {
                    let all: BTreeSet<String> = s.actions.drain(..).chain(scope.actions).collect();
                    s.actions = all.into_iter().collect();
                }
                None => merged.push(scope),
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s: Scope = "repository:team/app:push,pull".parse().unwrap();
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        let s: Scope = "repository:localhost:5000/app:pull".parse().unwrap();
        assert_eq!(s.name, "localhost:5000/app");
        let s: Scope = "repository(plugin):vieux/sshfs:pull".parse().unwrap();
        assert_eq!(s.resource_type, "repository");
        assert!(Scope::catalog().allows_catalog());
        assert_eq!(
            "registry:catalog:*".parse::<Scope>().unwrap(),
            Scope::catalog()
        );
        for bad in [
            "",
            "repository",
            "repository:app",
            ":app:pull",
            "repository::pull",
            "Repository:app:pull",
            "repository:app:pu ll",
            "repository:a\nb:pull",
            "repository:app:PULL",
            &format!("repository:{}:pull", "a".repeat(2000)),
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grants() {
        let s = Scope::repository("app", &[Action::Pull]);
        assert!(s.allows(Action::Pull, "app"));
        assert!(!s.allows(Action::Push, "app"));
        assert!(!s.allows(Action::Pull, "app2"));
        let all: Scope = "repository:app:*".parse().unwrap();
        assert!(all.allows(Action::Delete, "app"));
        assert!(!all.allows_catalog());
    }

    #[test]
    fn requested_scopes_merge() {
        let asked = parse_requested(&[
            "repository:a:pull repository:b:push",
            "repository:a:push",
            "repository:a:pull",
        ])
        .unwrap();
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[0].to_string(), "repository:a:pull,push");
        assert!(parse_requested(&["repository:a:pull", "nonsense"]).is_err());
        assert!(parse_requested::<&str>(&[]).unwrap().is_empty());
    }
}
