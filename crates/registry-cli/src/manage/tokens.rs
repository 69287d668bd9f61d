//! An instance's token service: its signing keys (created, rotated; 0600 files in its `tokens`
//! directory) and its scoped tokens (records in its storage, so every node sees them at once;
//! the secret is shown once and kept only as its SHA-256).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use registry_auth::token::keys::{CURRENT_KEY, PREVIOUS_KEY};
use registry_auth::token::records::{
    check_token_name, new_secret, secret_hash, ScopePattern, TokenRecord, TokenRecords,
};
use registry_auth::token::{rfc3339 as date, unix_now, KeyRing, SigningKey};
use registry_auth::{TokenKeys, TokenSettings};
use registry_http::auth::records::StoredTokens;

use crate::config::{Settings, TOKEN_KEYS};
use crate::instance::{create_private_dir, write_private, Instance};

/// The key directory of an instance: the configured one, else `tokens` in its directory.
pub(crate) fn key_dir(i: &Instance) -> anyhow::Result<PathBuf> {
    if !i.config_path().exists() {
        return Ok(i.dir.join(TOKEN_KEYS)); // a new instance, being configured
    }
    let raw = i.raw()?;
    Ok(match raw.auth.token.keys {
        Some(p) if p.is_relative() => i.dir.join(p),
        Some(p) => p,
        None => i.dir.join(TOKEN_KEYS),
    })
}

/// Creates the signing key in `dir` (refused if one exists, unless `force`); its key id.
pub(crate) fn init_key(dir: &Path, force: bool) -> anyhow::Result<String> {
    let current = dir.join(CURRENT_KEY);
    if current.exists() && !force {
        bail!(
            "{} exists already; `registry token rotate-key` replaces it without breaking tokens in use",
            current.display()
        );
    }
    create_private_dir(dir)?;
    let (key, pem) = SigningKey::generate()?;
    write_private(&current, pem.as_bytes())?;
    let previous = dir.join(PREVIOUS_KEY);
    if force && previous.exists() {
        std::fs::remove_file(&previous)
            .with_context(|| format!("cannot remove {}", previous.display()))?;
    }
    Ok(key.kid().to_owned())
}

/// A new current key; the current one becomes the previous (and still verifies the tokens it
/// signed until they expire). Returns the old and the new key id.
pub(crate) fn rotate_key(dir: &Path) -> anyhow::Result<(String, String)> {
    let current = dir.join(CURRENT_KEY);
    if !current.exists() {
        bail!(
            "no signing key in {} yet: run `registry token init`",
            dir.display()
        );
    }
    let old = SigningKey::load(&current)?;
    let old_pem =
        std::fs::read(&current).with_context(|| format!("cannot read {}", current.display()))?;
    // Both files are whole at every moment: the previous key first, then the new current one.
    write_private(&dir.join(PREVIOUS_KEY), &old_pem)?;
    let (key, pem) = SigningKey::generate()?;
    write_private(&current, pem.as_bytes())?;
    Ok((old.kid().to_owned(), key.kid().to_owned()))
}

/// What `check` and `instance show` say about token authentication (never a secret).
pub(crate) fn describe(t: &TokenSettings) -> String {
    match &t.keys {
        TokenKeys::Own { dir, lifetime } => {
            let keys = match KeyRing::open(dir) {
                Ok(ring) => {
                    let ids = ring.key_ids();
                    match ids.as_slice() {
                        [current] => format!("key {current}"),
                        [current, previous] => format!("key {current} (previous {previous})"),
                        _ => format!("keys {}", ids.join(", ")),
                    }
                }
                Err(_) => format!(
                    "NO SIGNING KEY in {} (run `registry token init`)",
                    dir.display()
                ),
            };
            format!(
                "OAuth2 tokens from the built-in service at {} (service {:?}, issuer {:?}, lifetime {}, {keys})",
                t.realm,
                t.service,
                t.issuer,
                humantime(*lifetime)
            )
        }
        TokenKeys::External(source) => {
            use registry_auth::token::TrustedSource as S;
            let keys = match source {
                S::Bundle(p) => format!("x5c chains to {}", p.display()),
                S::JwksFile(p) => format!("JWKS {}", p.display()),
                S::JwksUrl(u) => format!("JWKS {u}"),
            };
            format!(
                "OAuth2 tokens from the external issuer {:?} at {} (service {:?}, {keys})",
                t.issuer, t.realm, t.service
            )
        }
    }
}

/// What `check` says about OpenID Connect sign-in (never the client secret).
pub(crate) fn describe_oidc(o: &registry_auth::oidc::OidcSettings) -> String {
    let a = &o.admission;
    let mut who = Vec::new();
    for (what, list) in [
        ("emails", &a.emails),
        ("domains", &a.domains),
        ("groups", &a.groups),
    ] {
        if !list.is_empty() {
            who.push(format!("{what} {}", list.join(", ")));
        }
    }
    let who = if who.is_empty() {
        "anyone the provider signs in".to_owned()
    } else {
        who.join("; ")
    };
    format!(
        "OpenID Connect sign-in with {} (client {:?}, scopes {}; who: {who}; personal tokens live {})",
        o.issuer,
        o.client_id,
        o.scopes.join(" "),
        humantime(o.token_lifetime)
    )
}

/// Whether an instance's own token service can start (its key exists and loads).
pub(crate) fn check(s: &Settings) -> anyhow::Result<()> {
    if let Some(TokenSettings {
        keys: TokenKeys::Own { dir, .. },
        ..
    }) = &s.guard.token
    {
        KeyRing::open(dir).with_context(|| {
            format!(
                "token authentication needs a signing key in {}: run `registry token init`",
                dir.display()
            )
        })?;
    }
    Ok(())
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The scoped tokens of an instance, in its storage.
pub(crate) fn records(s: &Settings) -> anyhow::Result<Arc<dyn TokenRecords>> {
    let registry = registry_core::open::open(&s.storage)?.registry();
    Ok(Arc::new(StoredTokens::new(registry.object_store().clone())))
}

/// What `token create` is told.
pub(crate) struct NewToken {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires: Option<Duration>,
}

/// Stores a new scoped token (refused if the name is taken) and returns its secret, which is
/// never stored.
pub(crate) async fn create(records: &dyn TokenRecords, t: &NewToken) -> anyhow::Result<String> {
    check_token_name(&t.name)?;
    if t.scopes.is_empty() {
        bail!("a token needs at least one --scope (repository:PATTERN:pull,push or registry:catalog:*)");
    }
    for scope in &t.scopes {
        ScopePattern::parse(scope)?;
    }
    if records.get(&t.name).await?.is_some() {
        bail!("a token named {:?} exists already; revoke it first", t.name);
    }
    let secret = new_secret()?;
    let now = unix_now();
    records
        .put(&TokenRecord {
            name: t.name.clone(),
            secret_sha256: secret_hash(&secret),
            scopes: t.scopes.clone(),
            created: now,
            expires: t.expires.map(|d| now + d.as_secs()),
            owner: None,
            groups: Vec::new(),
            email: None,
        })
        .await?;
    Ok(secret)
}

/// One line per token: name, scopes, created, expires, owner.
pub(crate) async fn list(records: &dyn TokenRecords) -> anyhow::Result<String> {
    let now = unix_now();
    let mut out = String::new();
    for r in records.list().await? {
        let expires = match r.expires {
            None => "never".to_owned(),
            Some(e) if e <= now => format!("{} (expired)", date(e)),
            Some(e) => date(e),
        };
        out += &format!(
            "{}\t{}\tcreated {}\texpires {expires}{}\n",
            r.name,
            r.scopes.join(" "),
            date(r.created),
            r.owner.map(|o| format!("\towner {o}")).unwrap_or_default()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_init_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("tokens");
        let first = init_key(&keys, false).unwrap();
        assert!(init_key(&keys, false).is_err(), "refused without --force");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys.join(CURRENT_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (old, new) = rotate_key(&keys).unwrap();
        assert_eq!(old, first);
        assert_ne!(new, first);
        let ring = KeyRing::open(&keys).unwrap();
        assert_eq!(ring.key_ids(), vec![new, first]);
        assert!(rotate_key(&dir.path().join("none")).is_err());
    }

    #[tokio::test]
    async fn tokens_are_created_listed_and_checked() {
        let records = StoredTokens::new(Arc::new(object_store::memory::InMemory::new()));
        let t = NewToken {
            name: "ci-app".into(),
            scopes: vec!["repository:app/*:pull,push".into()],
            expires: Some(Duration::from_secs(90 * 86400)),
        };
        let secret = create(&records, &t).await.unwrap();
        assert!(create(&records, &t).await.is_err(), "the name is taken");
        let listed = list(&records).await.unwrap();
        assert!(listed.starts_with("ci-app\trepository:app/*:pull,push\tcreated "));
        assert!(!listed.contains(&secret));
        for (name, scope) in [
            ("bad/name", "repository:a:pull"),
            ("ok", "repository:a:fly"),
        ] {
            let bad = NewToken {
                name: name.into(),
                scopes: vec![scope.into()],
                expires: None,
            };
            assert!(create(&records, &bad).await.is_err(), "{name} {scope}");
        }
    }
}
