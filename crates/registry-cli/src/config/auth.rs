//! The `[auth]`, `[auth.token]`, `[network]` and `[[access]]` sections: HTTP Basic, token
//! authentication (the built-in token service or an external issuer), client certificates,
//! allowlists and rules, validated into [`GuardSettings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use registry_auth::brake::BrakeSettings;
use registry_auth::ip::IpRanges;
use registry_auth::oidc::{Admission, OidcSettings};
use registry_auth::pattern::NamePattern;
use registry_auth::token::TrustedSource;
use registry_auth::{GuardSettings, Rule, TokenKeys, TokenSettings};
use serde::Deserialize;

use super::{parse_duration, RawTls};

/// The built-in token service's key directory, relative to the instance's directory.
pub(crate) const TOKEN_KEYS: &str = "tokens";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub mode: Option<String>,
    pub htpasswd: Option<PathBuf>,
    pub realm: Option<String>,
    pub public_read: Option<bool>,
    pub cache: Option<String>,
    #[serde(default)]
    pub brake: RawBrake,
    #[serde(default)]
    pub token: RawToken,
    pub oidc: Option<RawOidc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Option<Vec<String>>,
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    pub token_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    pub lifetime: Option<String>,
    pub keys: Option<PathBuf>,
    pub service: Option<String>,
    pub realm: Option<String>,
    pub issuer: Option<String>,
    pub rootcertbundle: Option<PathBuf>,
    pub jwks: Option<String>,
}

impl RawToken {
    fn is_empty(&self) -> bool {
        self.lifetime.is_none()
            && self.keys.is_none()
            && self.service.is_none()
            && self.realm.is_none()
            && self.issuer.is_none()
            && self.rootcertbundle.is_none()
            && self.jwks.is_none()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBrake {
    pub attempts: Option<u32>,
    pub address_attempts: Option<u32>,
    pub window: Option<String>,
    pub pause: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub allow: Option<Vec<String>>,
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<String>,
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// Where an instance is reached, for the token service's defaults.
pub(super) struct Site<'a> {
    pub hostname: Option<&'a str>,
    pub listen: SocketAddr,
    pub https: bool,
}

pub(super) fn validate_guard(
    auth: &RawAuth,
    network: &RawNetwork,
    tls: &RawTls,
    access: &[RawRule],
    site: &Site<'_>,
) -> anyhow::Result<GuardSettings> {
    let d = BrakeSettings::default();
    let brake = BrakeSettings {
        attempts: auth.brake.attempts.unwrap_or(d.attempts),
        address_attempts: auth.brake.address_attempts.unwrap_or(d.address_attempts),
        window: match &auth.brake.window {
            Some(w) => parse_duration(w).context("auth.brake.window")?,
            None => d.window,
        },
        pause: match &auth.brake.pause {
            Some(p) => parse_duration(p).context("auth.brake.pause")?,
            None => d.pause,
        },
    };
    let client_names = match &tls.client_names {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|n| NamePattern::parse(n))
                .collect::<Result<Vec<_>, _>>()
                .context("tls.client_names")?,
        ),
    };
    let ranges = |list: &Option<Vec<String>>, default: IpRanges, what: &str| match list {
        None => Ok(default),
        Some(l) => IpRanges::parse(l).context(what.to_owned()),
    };
    let rules = access
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Rule::with_groups(
                &r.users,
                &r.groups,
                &r.certificates,
                &r.repositories,
                &r.actions,
            )
            .with_context(|| format!("access rule {}", i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    GuardSettings {
        htpasswd: auth.htpasswd.clone(),
        realm: auth.realm.clone().unwrap_or_else(|| "Registry".into()),
        public_read: auth.public_read.unwrap_or(false),
        cache: parse_duration(auth.cache.as_deref().unwrap_or("2m")).context("auth.cache")?,
        brake,
        client_certificates: tls.client_ca.is_some(),
        client_names,
        allow: ranges(&network.allow, IpRanges::all(), "network.allow")?,
        trusted_proxies: ranges(
            &network.trusted_proxies,
            IpRanges::none(),
            "network.trusted_proxies",
        )?,
        rules,
        token: validate_token(auth, site)?,
        oidc: None,
    }
    .with_oidc(auth, access)
}

trait WithOidc: Sized {
    fn with_oidc(self, auth: &RawAuth, access: &[RawRule]) -> anyhow::Result<Self>;
}

impl WithOidc for GuardSettings {
    /// Adds `[auth.oidc]`, which needs the built-in token service.
    fn with_oidc(mut self, auth: &RawAuth, access: &[RawRule]) -> anyhow::Result<GuardSettings> {
        let Some(raw) = &auth.oidc else {
            return Ok(self);
        };
        let own = matches!(
            &self.token,
            Some(TokenSettings {
                keys: TokenKeys::Own { .. },
                ..
            })
        );
        if !own {
            bail!("[auth.oidc] needs the built-in token service: auth.mode = \"token\" without an external issuer");
        }
        self.oidc = Some(validate_oidc(raw, access)?);
        Ok(self)
    }
}

/// `[auth.oidc]`: the provider, the client, and who may sign in.
fn validate_oidc(raw: &RawOidc, access: &[RawRule]) -> anyhow::Result<OidcSettings> {
    let issuer = raw
        .issuer
        .clone()
        .context("auth.oidc.issuer is required (the provider's URL)")?;
    let url = reqwest::Url::parse(&issuer)
        .with_context(|| format!("auth.oidc.issuer {issuer:?} is not a URL"))?;
    let host = url.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        bail!("auth.oidc.issuer {issuer:?} must be an https:// URL (http:// only on loopback)");
    }
    let client_id = raw
        .client_id
        .clone()
        .filter(|c| !c.trim().is_empty())
        .context("auth.oidc.client_id is required")?;
    let client_secret = match (&raw.client_secret, &raw.client_secret_file) {
        (Some(_), Some(_)) => bail!("set auth.oidc.client_secret or client_secret_file, not both"),
        (Some(secret), None) => secret.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| {
                format!(
                    "cannot read auth.oidc.client_secret_file {}",
                    file.display()
                )
            })?
            .trim()
            .to_owned(),
        (None, None) => bail!("auth.oidc.client_secret_file (or client_secret) is required"),
    };
    if client_secret.is_empty() {
        bail!("the OpenID Connect client secret is empty");
    }
    let groups_wanted =
        !raw.allowed_groups.is_empty() || access.iter().any(|r| !r.groups.is_empty());
    let scopes = match &raw.scopes {
        Some(s) => s.clone(),
        None => {
            let mut s: Vec<String> = ["openid", "email", "profile"].map(str::to_owned).to_vec();
            if groups_wanted {
                s.push("groups".into());
            }
            s
        }
    };
    let token_lifetime = parse_duration(raw.token_lifetime.as_deref().unwrap_or("90d"))
        .context("auth.oidc.token_lifetime")?;
    if token_lifetime < Duration::from_secs(60) {
        bail!("auth.oidc.token_lifetime must be at least 1m");
    }
    for domain in &raw.allowed_domains {
        if domain.contains('@') || domain.trim().is_empty() {
            bail!("auth.oidc.allowed_domains: {domain:?} is not a domain (example.com)");
        }
    }
    Ok(OidcSettings {
        issuer: issuer.trim_end_matches('/').to_owned(),
        client_id,
        client_secret,
        scopes,
        groups_claim: raw.groups_claim.clone().unwrap_or_else(|| "groups".into()),
        admission: Admission {
            emails: raw.allowed_emails.clone(),
            domains: raw.allowed_domains.clone(),
            groups: raw.allowed_groups.clone(),
        },
        token_lifetime,
    })
}

/// The token authentication settings, when `auth.mode = "token"`.
fn validate_token(auth: &RawAuth, site: &Site<'_>) -> anyhow::Result<Option<TokenSettings>> {
    let t = &auth.token;
    match auth.mode.as_deref() {
        None | Some("basic") if t.is_empty() => return Ok(None),
        None | Some("basic") => bail!("[auth.token] needs auth.mode = \"token\""),
        Some("token") => {}
        Some(other) => bail!("auth.mode {other:?} must be \"basic\" or \"token\""),
    }
    let external = match (&t.rootcertbundle, &t.jwks) {
        (Some(_), Some(_)) => bail!("auth.token: set rootcertbundle or jwks, not both"),
        (Some(bundle), None) => Some(TrustedSource::Bundle(bundle.clone())),
        (None, Some(url)) if url.starts_with("https://") || url.starts_with("http://") => {
            Some(TrustedSource::JwksUrl(url.clone()))
        }
        (None, Some(file)) => Some(TrustedSource::JwksFile(PathBuf::from(file))),
        (None, None) => None,
    };
    let service = match (&t.service, site.hostname) {
        (Some(s), _) if !s.trim().is_empty() => s.clone(),
        (Some(_), _) => bail!("auth.token.service must not be empty"),
        (None, Some(host)) => authority(host, site),
        (None, None) => site.listen.to_string(),
    };
    let realm = match (&t.realm, &external) {
        (Some(r), _) => {
            let ok = (r.starts_with("https://") || r.starts_with("http://"))
                && !r.contains(['"', '\\'])
                && !r.chars().any(char::is_control);
            if !ok {
                bail!("auth.token.realm {r:?} must be an http:// or https:// URL");
            }
            r.clone()
        }
        (None, Some(_)) => bail!("an external token issuer needs auth.token.realm (its token URL)"),
        (None, None) => {
            let host = match site.hostname {
                Some(h) => authority(h, site),
                None if site.listen.ip().is_unspecified() => bail!(
                    "token authentication needs instance.hostname or auth.token.realm \
                     (clients must be told where to get tokens; {} is not an address they can use)",
                    site.listen
                ),
                None => site.listen.to_string(),
            };
            let scheme = if site.https { "https" } else { "http" };
            format!("{scheme}://{host}/auth/token")
        }
    };
    let issuer = match (&t.issuer, &external) {
        (Some(i), _) => i.clone(),
        (None, Some(_)) => bail!("an external token issuer needs auth.token.issuer (its iss)"),
        (None, None) => service.clone(),
    };
    let keys = match external {
        Some(source) => {
            if t.lifetime.is_some() || t.keys.is_some() {
                bail!("auth.token.lifetime and keys are for the built-in token service, not an external issuer");
            }
            TokenKeys::External(source)
        }
        None => {
            let lifetime = parse_duration(t.lifetime.as_deref().unwrap_or("5m"))
                .context("auth.token.lifetime")?;
            if !(Duration::from_secs(30)..=Duration::from_secs(24 * 3600)).contains(&lifetime) {
                bail!("auth.token.lifetime must be between 30s and 24h");
            }
            TokenKeys::Own {
                dir: t.keys.clone().unwrap_or_else(|| PathBuf::from(TOKEN_KEYS)),
                lifetime,
            }
        }
    };
    Ok(Some(TokenSettings {
        realm,
        service,
        issuer,
        keys,
    }))
}

/// `host`, with the listening port unless it is the scheme's default.
fn authority(host: &str, site: &Site<'_>) -> String {
    let default = if site.https { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]") // an IPv6 address
    } else {
        host.to_owned()
    };
    match site.listen.port() {
        p if p == default => host,
        p => format!("{host}:{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::RawConfig;
    use super::*;

    fn token(toml: &str) -> anyhow::Result<Option<TokenSettings>> {
        let raw: RawConfig = toml::from_str(toml)?;
        Ok(raw.validate()?.guard.token)
    }

    #[test]
    fn token_settings_and_their_defaults() {
        assert!(token("").unwrap().is_none());
        assert!(token("[auth]\nmode = \"basic\"\n").unwrap().is_none());
        let t = token(
            "[instance]\nhostname = \"reg.example.com\"\n[server]\nlisten = \"0.0.0.0:443\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n[auth]\nmode = \"token\"\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.realm, "https://reg.example.com/auth/token");
        assert_eq!(
            (t.service.as_str(), t.issuer.as_str()),
            ("reg.example.com", "reg.example.com")
        );
        assert_eq!(
            t.keys,
            TokenKeys::Own {
                dir: PathBuf::from("tokens"),
                lifetime: Duration::from_secs(300)
            }
        );
        // On loopback, without a host name: the listen address.
        let t = token("[server]\nlisten = \"127.0.0.1:5000\"\n[auth]\nmode = \"token\"\n[auth.token]\nlifetime = \"10m\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(t.realm, "http://127.0.0.1:5000/auth/token");
        assert_eq!(t.service, "127.0.0.1:5000");
        // An external issuer, as Distribution's auth.token.
        let t = token("[auth]\nmode = \"token\"\n[auth.token]\nrealm = \"https://auth.example.com/token\"\nservice = \"registry\"\nissuer = \"auth\"\njwks = \"https://auth.example.com/jwks\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            t.keys,
            TokenKeys::External(TrustedSource::JwksUrl(
                "https://auth.example.com/jwks".into()
            ))
        );
    }

    #[test]
    fn bad_token_settings_are_refused() {
        for bad in [
            "[auth]\nmode = \"oauth\"\n",
            "[auth.token]\nlifetime = \"5m\"\n",
            "[server]\nlisten = \"0.0.0.0:5000\"\n[auth]\nmode = \"token\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\nlifetime = \"1s\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\nlifetime = \"soon\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\nrealm = \"ftp://x\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\njwks = \"k.json\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\nrealm = \"https://a/t\"\njwks = \"k.json\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\nrealm = \"https://a/t\"\nissuer = \"a\"\njwks = \"k.json\"\nrootcertbundle = \"b.pem\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\nrealm = \"https://a/t\"\nissuer = \"a\"\njwks = \"k.json\"\nlifetime = \"5m\"\n",
            "[auth]\nmode = \"token\"\n[auth.token]\nservice = \" \"\n",
        ] {
            assert!(token(bad).is_err(), "{bad}");
        }
        // Rules need some authentication; tokens are one.
        let rules = "[[access]]\nusers = [\"ann\"]\nrepositories = [\"a\"]\nactions = [\"pull\"]\n";
        assert!(token(rules).is_err());
        assert!(token(&format!("[auth]\nmode = \"token\"\n{rules}")).is_ok());
    }
}
