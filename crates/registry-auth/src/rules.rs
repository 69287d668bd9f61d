//! Access rules: who (users, certificate names) may do what (pull, push, delete) to which
//! repositories (globs). Without rules every authenticated identity may do everything; with
//! rules, what no rule grants is denied. Anonymous access is a separate switch.

use std::fmt;
use std::str::FromStr;

use crate::pattern::{NamePattern, RepoGlob};
use crate::{Error, Identity};

/// What a request does to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Read: manifests, blobs, tags, referrers, the catalog.
    Pull,
    /// Write: uploads, manifest and tag pushes.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Action, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pull" | "read" => Ok(Action::Pull),
            "push" | "write" => Ok(Action::Push),
            "delete" => Ok(Action::Delete),
            _ => Err(Error::setting(s, "an action (pull, push, delete)")),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        })
    }
}

/// One rule: any of `users`, `groups` (of people who signed in with OpenID Connect) or
/// `certificates`, on any of `repositories`, may do `actions`.
#[derive(Clone, Debug)]
pub struct Rule {
    users: Vec<String>,
    groups: Vec<String>,
    certificates: Vec<NamePattern>,
    repositories: Vec<RepoGlob>,
    actions: Vec<Action>,
}

impl Rule {
    /// Builds a rule; user `*` means every user, certificate patterns use DNS wildcards.
    pub fn new<S: AsRef<str>>(
        users: &[S],
        certificates: &[S],
        repositories: &[S],
        actions: &[S],
    ) -> Result<Rule, Error> {
        Rule::with_groups(users, &[] as &[&str], certificates, repositories, actions)
    }

    /// [`Rule::new`], also naming groups of people (users match a person's name too).
    pub fn with_groups<S: AsRef<str>, G: AsRef<str>>(
        users: &[S],
        groups: &[G],
        certificates: &[S],
        repositories: &[S],
        actions: &[S],
    ) -> Result<Rule, Error> {
        if users.is_empty() && groups.is_empty() && certificates.is_empty() {
            return Err(Error::Rule("users, groups or certificates"));
        }
        if repositories.is_empty() || actions.is_empty() {
            return Err(Error::Rule("repositories and actions"));
        }
        Ok(Rule {
            users: users.iter().map(|u| u.as_ref().to_owned()).collect(),
            groups: groups.iter().map(|g| g.as_ref().to_owned()).collect(),
            certificates: certificates
                .iter()
                .map(|c| NamePattern::parse(c.as_ref()))
                .collect::<Result<_, _>>()?,
            repositories: repositories
                .iter()
                .map(|r| RepoGlob::parse(r.as_ref()))
                .collect::<Result<_, _>>()?,
            actions: actions
                .iter()
                .map(|a| a.as_ref().parse())
                .collect::<Result<_, _>>()?,
        })
    }

    fn names(&self, id: &Identity) -> bool {
        match id {
            Identity::User(u) => self.users.iter().any(|x| x == "*" || x == u),
            Identity::Certificate(c) => self.certificates.iter().any(|p| p.matches(c)),
            Identity::Person(p) => {
                self.users.iter().any(|x| x == "*" || *x == p.name)
                    || self.groups.iter().any(|g| p.groups.contains(g))
            }
            // Tokens carry their own rights (what was granted, or their scopes).
            Identity::Anonymous | Identity::Token(_) | Identity::Machine(_) => false,
        }
    }

    fn grants(&self, id: &Identity, action: Action, repo: &str) -> bool {
        self.actions.contains(&action)
            && self.names(id)
            && self.repositories.iter().any(|g| g.matches(repo))
    }
}

/// What requests without an identity may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anonymous {
    /// Nothing.
    Deny,
    /// Pull anything.
    Pull,
    /// Everything: no authentication is configured.
    Everything,
}

/// Anonymous access plus the rules.
#[derive(Clone, Debug)]
pub struct Policy {
    anonymous: Anonymous,
    rules: Vec<Rule>,
}

impl Policy {
    /// A policy.
    pub fn new(anonymous: Anonymous, rules: Vec<Rule>) -> Policy {
        Policy { anonymous, rules }
    }

    /// Whether any rule is configured (without rules, identities may do everything).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// What anonymous requests may do.
    pub fn anonymous(&self) -> Anonymous {
        self.anonymous
    }

    /// Whether `id` may do `action` on `repo` (`None`: the registry itself, i.e. `/v2/` and
    /// the catalog, which is then filtered repository by repository).
    pub fn allows(&self, id: &Identity, action: Action, repo: Option<&str>) -> bool {
        match id {
            Identity::Anonymous => match self.anonymous {
                Anonymous::Everything => true,
                Anonymous::Pull => action == Action::Pull,
                Anonymous::Deny => false,
            },
            _ if self.rules.is_empty() => true,
            _ => match repo {
                None => action == Action::Pull,
                Some(repo) => self.rules.iter().any(|r| r.grants(id, action, repo)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_table() {
        let rules = vec![
            Rule::new(&["ann"], &[], &["team-a/**"], &["pull", "push", "delete"]).unwrap(),
            Rule::new(&["*"], &[], &["public/*"], &["pull"]).unwrap(),
            Rule::new(
                &[],
                &["*.ci.example.com"],
                &["team-a/**", "team-b/**"],
                &["pull", "push"],
            )
            .unwrap(),
            Rule::with_groups(
                &[] as &[&str],
                &["devs"],
                &[],
                &["devs/**"],
                &["pull", "push"],
            )
            .unwrap(),
        ];
        let p = Policy::new(Anonymous::Deny, rules);
        let person = |name: &str, groups: &[&str]| {
            Identity::Person(std::sync::Arc::new(crate::Person {
                name: name.into(),
                email: None,
                groups: groups.iter().map(|g| g.to_string()).collect(),
                token: "pat-1".into(),
            }))
        };
        let dev = person("dev@example.com", &["devs"]);
        let ann_person = person("ann", &[]);
        let ann = Identity::User("ann".into());
        let bob = Identity::User("bob".into());
        let ci = Identity::Certificate("eu.ci.example.com".into());
        let ann_cert = Identity::Certificate("ann".into());
        use Action::*;
        let cases = [
            (&ann, Push, Some("team-a/app"), true),
            (&ann, Delete, Some("team-a/x/y"), true),
            (&ann, Pull, Some("team-b/app"), false),
            (&ann, Pull, Some("public/base"), true),
            (&bob, Pull, Some("public/base"), true),
            (&bob, Push, Some("public/base"), false),
            (&bob, Pull, Some("team-a/app"), false),
            (&bob, Pull, None, true),
            (&bob, Push, None, false),
            (&ci, Push, Some("team-b/app"), true),
            (&ci, Delete, Some("team-b/app"), false),
            (&ci, Pull, Some("public/base"), false),
            (&ann_cert, Pull, Some("team-a/app"), false), // a certificate is not the user
            (&Identity::Anonymous, Pull, Some("public/base"), false),
            (&Identity::Anonymous, Pull, None, false),
            (&dev, Push, Some("devs/app"), true),
            (&dev, Delete, Some("devs/app"), false),
            (&dev, Pull, Some("team-a/app"), false),
            (&dev, Pull, Some("public/base"), true),
            (&ann_person, Push, Some("team-a/app"), true), // users name people too
        ];
        for (id, action, repo, expected) in cases {
            assert_eq!(
                p.allows(id, action, repo),
                expected,
                "{id} {action} {repo:?}"
            );
        }
    }

    #[test]
    fn anonymous_modes_and_no_rules() {
        let ann = Identity::User("ann".into());
        let anon = Identity::Anonymous;
        let open = Policy::new(Anonymous::Everything, vec![]);
        assert!(open.allows(&anon, Action::Delete, Some("x")));
        let public = Policy::new(Anonymous::Pull, vec![]);
        assert!(public.allows(&anon, Action::Pull, Some("x")));
        assert!(public.allows(&anon, Action::Pull, None));
        assert!(!public.allows(&anon, Action::Push, Some("x")));
        assert!(public.allows(&ann, Action::Delete, Some("x")));
        let closed = Policy::new(Anonymous::Deny, vec![]);
        assert!(!closed.allows(&anon, Action::Pull, None));
        assert!(closed.allows(&ann, Action::Push, Some("any/thing")));
    }

    #[test]
    fn bad_rules() {
        let none: [&str; 0] = [];
        assert!(Rule::new(&none, &none, &["x"], &["pull"]).is_err());
        assert!(Rule::new(&["a"], &none, &none, &["pull"]).is_err());
        assert!(Rule::new(&["a"], &none, &["x"], &["fly"]).is_err());
        assert!(Rule::new(&["a"], &["bad name!"], &["x"], &["pull"]).is_err());
    }
}
