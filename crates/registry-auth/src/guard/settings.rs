//! A guard from settings (what a configuration file says): [`GuardSettings::build`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Guard;
use crate::basic::BasicAuth;
use crate::brake::BrakeSettings;
use crate::ip::IpRanges;
use crate::pattern::NamePattern;
use crate::rules::{Anonymous, Policy};
use crate::token::{KeyRing, TokenIssuer, TokenVerifier, TrustedSource};

/// An instance's guards as settings (what a configuration file says); [`GuardSettings::build`]
/// makes the [`Guard`].
///
/// ```
/// use registry_auth::ip::IpRanges;
/// use registry_auth::GuardSettings;
///
/// let settings = GuardSettings {
///     allow: IpRanges::parse(&["10.0.0.0/8"])?,
///     public_read: true,
///     ..GuardSettings::default()
/// };
/// assert!(settings.build()?.is_some());
/// assert!(GuardSettings::default().build()?.is_none(), "nothing guarded, no guard");
/// # Ok::<(), registry_auth::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// HTTP Basic against this htpasswd file.
    pub htpasswd: Option<PathBuf>,
    /// The realm of the Basic challenge.
    pub realm: String,
    /// Anonymous clients may pull.
    pub public_read: bool,
    /// How long a verified password is remembered.
    pub cache: Duration,
    /// The brute-force brake.
    pub brake: BrakeSettings,
    /// Client certificates verified at the TLS handshake are identities.
    pub client_certificates: bool,
    /// … only those with a matching name, if set.
    pub client_names: Option<Vec<NamePattern>>,
    /// The addresses that may connect.
    pub allow: IpRanges,
    /// Forwarding headers are believed from these.
    pub trusted_proxies: IpRanges,
    /// Who may do what; without rules every identity may do everything.
    pub rules: Vec<crate::Rule>,
    /// Token authentication on the API (the Bearer flow), if on.
    pub token: Option<TokenSettings>,
    /// OpenID Connect sign-in for people (with token authentication), if on.
    pub oidc: Option<crate::oidc::OidcSettings>,
}

/// Token authentication: where clients get tokens, whom they are for, and the keys that sign
/// (our own service) or verify (an external issuer's) them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The token endpoint clients are sent to (`https://<host>/auth/token` for our own).
    pub realm: String,
    /// The service name tokens are for (`aud`), usually the registry's host name.
    pub service: String,
    /// Who issues them (`iss`).
    pub issuer: String,
    /// The keys.
    pub keys: TokenKeys,
}

/// Whose keys sign tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKeys {
    /// Our own token service, with the keys in this directory (see
    /// [`crate::token::keys`]); tokens live `lifetime`.
    Own {
        /// The directory of `signing-key.pem` (and `previous-key.pem` after a rotation).
        dir: PathBuf,
        /// How long an access token lives.
        lifetime: Duration,
    },
    /// An external issuer's keys.
    External(TrustedSource),
}

impl Default for GuardSettings {
    /// No guard: everyone may do everything.
    fn default() -> Self {
        GuardSettings {
            htpasswd: None,
            realm: "Registry".to_owned(),
            public_read: false,
            cache: Duration::from_secs(120),
            brake: BrakeSettings::default(),
            client_certificates: false,
            client_names: None,
            allow: IpRanges::all(),
            trusted_proxies: IpRanges::none(),
            rules: Vec::new(),
            token: None,
            oidc: None,
        }
    }
}

impl GuardSettings {
    /// Whether anything is guarded (an authentication method or an allowlist).
    pub fn is_guarded(&self) -> bool {
        self.htpasswd.is_some()
            || self.client_certificates
            || self.token.is_some()
            || !self.allow.is_everything()
    }

    /// The guard, or `None` when nothing is guarded (then no per-request work is needed).
    /// With our own token service, its keys are opened here; [`GuardSettings::build_with`]
    /// shares them with the issuer.
    pub fn build(&self) -> Result<Option<Guard>, crate::Error> {
        let keys = self.keys()?;
        self.build_with(keys.as_ref())
    }

    /// Our own token service's keys, opened (and watched), when tokens are ours.
    pub fn keys(&self) -> Result<Option<Arc<KeyRing>>, crate::Error> {
        match &self.token {
            Some(TokenSettings {
                keys: TokenKeys::Own { dir, .. },
                ..
            }) => Ok(Some(Arc::new(KeyRing::open(dir)?))),
            _ => Ok(None),
        }
    }

    /// [`GuardSettings::build`] with our own token service's keys already open.
    pub fn build_with(&self, keys: Option<&Arc<KeyRing>>) -> Result<Option<Guard>, crate::Error> {
        if !self.is_guarded() {
            return Ok(None);
        }
        let anonymous = if self.public_read {
            Anonymous::Pull
        } else {
            Anonymous::Everything
        };
        let mut guard = Guard::open()
            .with_allowed_addresses(self.allow.clone())
            .with_trusted_proxies(self.trusted_proxies.clone())
            .with_policy(Policy::new(anonymous, self.rules.clone()));
        if let Some(path) = &self.htpasswd {
            let basic = BasicAuth::open(path, &self.realm, self.cache)?;
            tracing::info!(file = %path.display(), users = basic.users(), "HTTP Basic authentication on");
            guard = guard.with_basic(basic, self.brake);
        }
        if self.client_certificates {
            guard = guard.with_client_certificates(self.client_names.clone());
        }
        if let Some(token) = &self.token {
            guard = guard.with_tokens(Arc::new(token.verifier(keys)?), &token.realm);
        }
        if let Some(oidc) = &self.oidc {
            guard = guard.with_people(oidc.admission.clone());
        }
        Ok(Some(guard))
    }
}

impl TokenSettings {
    /// What verifies tokens on the API: our own `keys`, or the external issuer's.
    pub fn verifier(&self, keys: Option<&Arc<KeyRing>>) -> Result<TokenVerifier, crate::Error> {
        Ok(match (&self.keys, keys) {
            (TokenKeys::Own { .. }, Some(keys)) => {
                TokenVerifier::own(&self.issuer, &self.service, keys.clone())
            }
            (TokenKeys::Own { dir, .. }, None) => {
                TokenVerifier::own(&self.issuer, &self.service, Arc::new(KeyRing::open(dir)?))
            }
            (TokenKeys::External(source), _) => {
                TokenVerifier::external(&self.issuer, &self.service, source.load()?)
            }
        })
    }

    /// Our own token service's issuer over `keys`, when tokens are ours.
    pub fn issuer(&self, keys: &Arc<KeyRing>) -> Option<TokenIssuer> {
        match &self.keys {
            TokenKeys::Own { lifetime, .. } => {
                Some(TokenIssuer::new(keys.clone(), &self.issuer, *lifetime))
            }
            TokenKeys::External(_) => None,
        }
    }
}
