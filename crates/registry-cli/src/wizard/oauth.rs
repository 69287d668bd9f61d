//! The wizard's fourth answer, "Yes, with OAuth2": the built-in token service (a signing key,
//! `auth.mode = "token"`), with people signing in at an OpenID Connect provider (issuer, client
//! id and secret, who may enter), and/or users who log in with passwords.

use anyhow::{bail, Context};
use toml_edit::{value, Array, DocumentMut};

use super::asker::Asker;
use super::{basic_users, split_list, AuthAnswer, ConfigArgs, Current};
use crate::instance::{set_key, write_private, Instance};
use crate::manage::tokens;

/// The file the client secret is kept in, in the instance directory (0600).
pub(super) const SECRET_FILE: &str = "oidc-client-secret";

/// An OpenID Connect provider, as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OidcAnswer {
    pub issuer: String,
    pub client_id: String,
    /// `None`: keep the secret already configured.
    pub client_secret: Option<String>,
    pub allowed_emails: Vec<String>,
    pub allowed_domains: Vec<String>,
    pub allowed_groups: Vec<String>,
}

/// What an instance's configuration says of its provider, as defaults.
#[derive(Default)]
pub(super) struct CurrentOidc {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub has_secret: bool,
    pub allowed_emails: Vec<String>,
    pub allowed_domains: Vec<String>,
    pub allowed_groups: Vec<String>,
}

impl CurrentOidc {
    pub(super) fn of(raw: &crate::config::RawConfig) -> Option<CurrentOidc> {
        let o = raw.auth.oidc.as_ref()?;
        Some(CurrentOidc {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            has_secret: o.client_secret.is_some() || o.client_secret_file.is_some(),
            allowed_emails: o.allowed_emails.clone(),
            allowed_domains: o.allowed_domains.clone(),
            allowed_groups: o.allowed_groups.clone(),
        })
    }
}

fn check_issuer(s: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(s).with_context(|| format!("{s:?} is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        bail!("{s:?} is not an https:// URL");
    }
    Ok(())
}

/// The OAuth2 questions: a provider for people (optional), then password users (required
/// without a provider).
pub(super) fn ask_oauth(
    ask: &mut Asker,
    a: &ConfigArgs,
    cur: &Current,
) -> anyhow::Result<AuthAnswer> {
    let current = cur.oidc.as_ref();
    let with_provider = match (&a.oidc_issuer, ask.interactive) {
        (Some(_), _) => true,
        (None, true) => ask.confirm(
            "Sign people in with an OpenID Connect provider (Gitea, GitLab, Keycloak, Authentik, Google, Entra…)?",
            "--oidc-issuer",
            Some(current.is_some() || cur.users.is_empty()),
        )?,
        (None, false) => current.is_some(),
    };
    let oidc = if with_provider {
        Some(ask_provider(ask, a, current)?)
    } else {
        None
    };
    // Without a provider, password users are the only way in; with one, they are optional.
    let want_users = oidc.is_none()
        || !a.users.is_empty()
        || (ask.interactive
            && ask.confirm(
                "Also create users who log in with a password (e.g. for CI)?",
                "--user",
                Some(false),
            )?);
    let users = if want_users {
        basic_users(ask, a, cur)?
    } else {
        Vec::new()
    };
    Ok(AuthAnswer::OAuth2 { users, oidc })
}

fn ask_provider(
    ask: &mut Asker,
    a: &ConfigArgs,
    current: Option<&CurrentOidc>,
) -> anyhow::Result<OidcAnswer> {
    let issuer = match &a.oidc_issuer {
        Some(i) => i.clone(),
        None => ask.text(
            "The provider's issuer URL (its discovery document is at <issuer>/.well-known/openid-configuration)",
            "--oidc-issuer",
            current.and_then(|c| c.issuer.clone()),
            check_issuer,
        )?,
    };
    check_issuer(&issuer)?;
    let client_id = match &a.oidc_client_id {
        Some(c) => c.clone(),
        None => ask.text(
            "Client id (registered at the provider)",
            "--oidc-client-id",
            current.and_then(|c| c.client_id.clone()),
            |s| {
                if s.trim().is_empty() {
                    bail!("the client id cannot be empty")
                }
                Ok(())
            },
        )?,
    };
    let had_secret = current.is_some_and(|c| c.has_secret);
    let client_secret = match &a.oidc_client_secret {
        Some(s) => Some(s.clone()),
        None if ask.interactive => {
            let prompt = if had_secret {
                "Client secret (blank keeps the current one)"
            } else {
                "Client secret"
            };
            Some(ask.password(prompt)?).filter(|s| !s.is_empty())
        }
        None => None,
    };
    if client_secret.is_none() && !had_secret {
        bail!("missing answer: --oidc-client-secret (or REGISTRY_OIDC_CLIENT_SECRET)");
    }
    let mut list = |flag: &Option<String>, prompt: &str, old: Vec<String>| match flag {
        Some(v) => anyhow::Ok(split_list(v)),
        None if ask.interactive => Ok(split_list(&ask.text_allow_empty(prompt, &old.join(","))?)),
        None => Ok(old),
    };
    let allowed_emails = list(
        &a.allowed_emails,
        "Who may sign in: email addresses (comma-separated; blank for any)",
        current
            .map(|c| c.allowed_emails.clone())
            .unwrap_or_default(),
    )?;
    let allowed_domains = list(
        &a.allowed_domains,
        "… or email domains (comma-separated; blank for any)",
        current
            .map(|c| c.allowed_domains.clone())
            .unwrap_or_default(),
    )?;
    let allowed_groups = list(
        &a.allowed_groups,
        "… or groups (comma-separated; blank for any)",
        current
            .map(|c| c.allowed_groups.clone())
            .unwrap_or_default(),
    )?;
    if ask.interactive
        && allowed_emails.is_empty()
        && allowed_domains.is_empty()
        && allowed_groups.is_empty()
    {
        ask.say("Everyone the provider signs in may use the registry.");
    }
    Ok(OidcAnswer {
        issuer: issuer.trim_end_matches('/').to_owned(),
        client_id: client_id.trim().to_owned(),
        client_secret,
        allowed_emails,
        allowed_domains,
        allowed_groups,
    })
}

fn list(items: &[String]) -> Option<toml_edit::Item> {
    (!items.is_empty()).then(|| value(items.iter().map(String::as_str).collect::<Array>()))
}

/// Writes the OAuth2 answer into `doc` (and, when nothing else is OAuth2, takes it out). Behind
/// a TLS-terminating proxy (`proxied`), clients reach `https://<domain>`: the realm says so.
pub(super) fn set_auth(doc: &mut DocumentMut, auth: &AuthAnswer, domain: &str, proxied: bool) {
    let AuthAnswer::OAuth2 { oidc, .. } = auth else {
        set_key(doc, "auth", "mode", None);
        if let Some(t) = doc.get_mut("auth").and_then(|a| a.as_table_mut()) {
            t.remove("oidc");
            t.remove("token");
        }
        return;
    };
    set_key(doc, "auth", "mode", Some(value("token")));
    let (realm, service) = if proxied {
        (
            Some(value(format!("https://{domain}/auth/token"))),
            Some(value(domain)),
        )
    } else {
        (None, None)
    };
    set_key(doc, "auth.token", "realm", realm);
    set_key(doc, "auth.token", "service", service);
    match oidc {
        None => {
            if let Some(t) = doc.get_mut("auth").and_then(|a| a.as_table_mut()) {
                t.remove("oidc");
            }
        }
        Some(o) => {
            set_key(doc, "auth.oidc", "issuer", Some(value(&o.issuer)));
            set_key(doc, "auth.oidc", "client_id", Some(value(&o.client_id)));
            if o.client_secret.is_some() {
                set_key(doc, "auth.oidc", "client_secret", None);
                set_key(
                    doc,
                    "auth.oidc",
                    "client_secret_file",
                    Some(value(SECRET_FILE)),
                );
            }
            set_key(doc, "auth.oidc", "allowed_emails", list(&o.allowed_emails));
            set_key(
                doc,
                "auth.oidc",
                "allowed_domains",
                list(&o.allowed_domains),
            );
            set_key(doc, "auth.oidc", "allowed_groups", list(&o.allowed_groups));
        }
    }
}

/// The configuration as it will be once the files are written, for validation before that:
/// a new client secret is inline instead of in its file.
pub(super) fn for_validation(doc: &DocumentMut, auth: &AuthAnswer) -> DocumentMut {
    let mut doc = doc.clone();
    if let AuthAnswer::OAuth2 {
        oidc: Some(OidcAnswer {
            client_secret: Some(secret),
            ..
        }),
        ..
    } = auth
    {
        set_key(&mut doc, "auth.oidc", "client_secret_file", None);
        set_key(&mut doc, "auth.oidc", "client_secret", Some(value(secret)));
    }
    doc
}

/// Writes the client secret (0600) and makes the signing key if there is none; what to tell.
/// `realm` is the token realm the configuration ends up with.
pub(super) fn write_files(i: &Instance, realm: &str, auth: &AuthAnswer) -> anyhow::Result<String> {
    let AuthAnswer::OAuth2 { oidc, .. } = auth else {
        return Ok(String::new());
    };
    let mut told = String::new();
    let keys = tokens::key_dir(i)?;
    if !keys.join(registry_auth::token::keys::CURRENT_KEY).exists() {
        let kid = tokens::init_key(&keys, false)?;
        told += &format!(
            "Created the token signing key {kid} in {}\n",
            keys.display()
        );
    }
    let origin = realm.strip_suffix("/auth/token").unwrap_or(realm);
    if let Some(o) = oidc {
        if let Some(secret) = &o.client_secret {
            write_private(&i.dir.join(SECRET_FILE), secret.as_bytes())?;
        }
        told += &format!(
            "At the provider, register the redirect URI {origin}/auth/callback\n\
             People sign in at {origin}/auth/login and get a personal access token there\n"
        );
    }
    Ok(told)
}
