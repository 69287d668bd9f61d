//! Patterns: client names with DNS wildcards (`*.clients.example.com`, where `*` stands for
//! exactly one label) and repository globs (`*` within one path component, `**` across them).

use std::fmt;

use crate::Error;

/// A client name pattern, matched case-insensitively label by label.
#[derive(Clone, PartialEq, Eq)]
pub struct NamePattern {
    text: String,
    labels: Vec<String>,
}

impl NamePattern {
    /// Parses a pattern: DNS labels separated by dots, any of which may be `*`.
    pub fn parse(s: &str) -> Result<NamePattern, Error> {
        let text = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<String> = text.split('.').map(str::to_owned).collect();
        let ok = |l: &String| {
            l == "*"
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        };
        if text.is_empty() || !labels.iter().all(ok) {
            return Err(Error::setting(
                s,
                "a name pattern (DNS labels, `*` for any one label)",
            ));
        }
        Ok(NamePattern { text, labels })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        let mut labels = name.split('.');
        for p in &self.labels {
            match labels.next() {
                Some(l) if !l.is_empty() && (p == "*" || p.eq_ignore_ascii_case(l)) => {}
                _ => return false,
            }
        }
        labels.next().is_none()
    }
}

impl fmt::Debug for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A repository glob: `*` matches within one path component, `**` any number of components.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RepoGlob(String);

impl RepoGlob {
    /// Parses a glob.
    pub fn parse(s: &str) -> Result<RepoGlob, Error> {
        let s = s.trim();
        if s.is_empty() || s.contains("***") {
            return Err(Error::setting(s, "a repository pattern"));
        }
        Ok(RepoGlob(s.to_owned()))
    }

    /// Whether `repo` matches.
    pub fn matches(&self, repo: &str) -> bool {
        glob(self.0.as_bytes(), repo.as_bytes())
    }
}

impl fmt::Debug for RepoGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Backtracking glob matching; patterns are short and come from the operator, names are bounded
/// by the repository name limit.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', b'/', rest @ ..] => {
            // `**/` also matches nothing, so `a/**/b` matches `a/b`.
            glob(rest, s) || (0..s.len()).any(|i| s[i] == b'/' && glob(rest, &s[i + 1..]))
        }
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..])),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_table() {
        let cases = [
            (
                "*.clients.registry.example.com",
                "ci.clients.registry.example.com",
                true,
            ),
            (
                "*.clients.registry.example.com",
                "CI.Clients.Registry.Example.com",
                true,
            ),
            (
                "*.clients.registry.example.com",
                "a.b.clients.registry.example.com",
                false,
            ),
            (
                "*.clients.registry.example.com",
                "clients.registry.example.com",
                false,
            ),
            (
                "*.clients.registry.example.com",
                ".clients.registry.example.com",
                false,
            ),
            (
                "*.clients.registry.example.com",
                "ci.clients.registry.example.com.evil",
                false,
            ),
            ("builder.example.com", "builder.example.com", true),
            ("builder.example.com", "builder.example.com.", true),
            ("builder.example.com", "xbuilder.example.com", false),
            ("ci.*.example.com", "ci.eu.example.com", true),
            ("ci.*.example.com", "ci.example.com", false),
            ("*", "localhost", true),
            ("*", "a.b", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                NamePattern::parse(pattern).unwrap().matches(name),
                expected,
                "{pattern} vs {name}"
            );
        }
        for bad in ["", "a..b", "a b.com", "*x.example.com"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repo_table() {
        let cases = [
            ("team-a/*", "team-a/app", true),
            ("team-a/*", "team-a/app/sub", false),
            ("team-a/*", "team-a", false),
            ("team-a/**", "team-a/app/sub", true),
            ("team-a/**", "team-ab/app", false),
            ("**", "anything/at/all", true),
            ("*", "library", true),
            ("*", "library/alpine", false),
            ("lib*", "library", true),
            ("*/app", "x/app", true),
            ("*/app", "x/y/app", false),
            ("**/app", "app", true),
            ("**/app", "x/y/app", true),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/x/y/c", false),
            ("exact/name", "exact/name", true),
            ("exact/name", "exact/names", false),
        ];
        for (pattern, repo, expected) in cases {
            assert_eq!(
                RepoGlob::parse(pattern).unwrap().matches(repo),
                expected,
                "{pattern} vs {repo}"
            );
        }
    }
}
