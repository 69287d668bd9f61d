//! The guard of one instance, in the order it decides: is the address allowed, who is this
//! (client certificate, Bearer token, Basic credentials, or anonymous), and may they do this.
//! Every answer is a [`Refusal`] the HTTP layer turns into its status; this module knows nothing
//! of HTTP types. Logging in with a name and password (Basic on the API, or at the token
//! endpoint) is in `login`; building a guard from settings in `settings`.

mod login;
mod settings;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::basic::BasicAuth;
use crate::brake::{Brake, BrakeSettings};
use crate::ip::{client_address, IpRanges};
use crate::oidc::Admission;
use crate::pattern::NamePattern;
use crate::rules::{Action, Anonymous, Policy};
use crate::tls::ClientCertificate;
use crate::token::records::TokenRecords;
use crate::token::{Scope, TokenVerifier};
use crate::{Grant, Identity};

pub use settings::{GuardSettings, TokenKeys, TokenSettings};

/// How a client is asked to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `WWW-Authenticate: Basic realm="<realm>"`.
    Basic {
        /// The realm.
        realm: String,
    },
    /// `WWW-Authenticate: Bearer realm="<realm>",service="<service>"` (the HTTP layer adds the
    /// scope the request needed), with `error` when a token was refused.
    Bearer {
        /// Where tokens are issued.
        realm: String,
        /// The service tokens must be for.
        service: String,
        /// Why the token presented was refused, if one was.
        error: Option<BearerError>,
    },
}

/// Why a Bearer token was refused (RFC 6750 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BearerError {
    /// `invalid_token`: malformed, expired, badly signed, for another service…; the text says
    /// which.
    InvalidToken(String),
    /// `insufficient_scope`: a good token that does not grant what the request needs.
    InsufficientScope,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `DENIED`: the address, the certificate's name, or the identity's rights.
    Denied(String),
    /// 401 `UNAUTHORIZED` with the challenge.
    Unauthenticated {
        /// How to authenticate.
        challenge: Challenge,
    },
    /// 429 `TOOMANYREQUESTS`: the brute-force brake is engaged for this user name from this
    /// address, or for the whole address.
    TooManyAttempts {
        /// When to come back.
        retry_after: Duration,
    },
}

/// Token authentication on the API.
struct TokenMode {
    verifier: Arc<TokenVerifier>,
    realm: String,
}

/// Everything one instance checks before a request reaches storage.
pub struct Guard {
    allow: IpRanges,
    trusted_proxies: IpRanges,
    basic: Option<BasicAuth>,
    brake: Brake,
    client_names: Option<Vec<NamePattern>>,
    client_certificates: bool,
    policy: Policy,
    flights: login::Flights,
    tokens: Option<TokenMode>,
    records: Option<Arc<dyn TokenRecords>>,
    people: Option<Admission>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::open()
    }
}

impl Guard {
    /// No guard at all: every address, everyone may do everything.
    pub fn open() -> Guard {
        Guard {
            allow: IpRanges::all(),
            trusted_proxies: IpRanges::none(),
            basic: None,
            brake: Brake::new(BrakeSettings::default()),
            client_names: None,
            client_certificates: false,
            policy: Policy::new(Anonymous::Everything, Vec::new()),
            flights: login::Flights::default(),
            tokens: None,
            records: None,
            people: None,
        }
    }

    /// Only these addresses may connect.
    pub fn with_allowed_addresses(mut self, allow: IpRanges) -> Guard {
        self.allow = allow;
        self
    }

    /// Forwarding headers are believed from these addresses.
    pub fn with_trusted_proxies(mut self, proxies: IpRanges) -> Guard {
        self.trusted_proxies = proxies;
        self
    }

    /// Users log in with HTTP Basic against this file; failures engage the brake.
    pub fn with_basic(mut self, basic: BasicAuth, brake: BrakeSettings) -> Guard {
        self.basic = Some(basic);
        self.brake = Brake::new(brake);
        self
    }

    /// Client certificates (verified at the handshake) are identities; with `names`, only
    /// certificates with a matching name are.
    pub fn with_client_certificates(mut self, names: Option<Vec<NamePattern>>) -> Guard {
        self.client_certificates = true;
        self.client_names = names;
        self
    }

    /// Who may do what. [`Anonymous::Everything`] is lowered to [`Anonymous::Deny`] when an
    /// authentication method is configured: deny by default.
    pub fn with_policy(mut self, policy: Policy) -> Guard {
        self.policy = policy;
        self
    }

    /// The API takes Bearer tokens that `verifier` accepts (and nothing else but client
    /// certificates); clients are sent to `realm` to get them.
    pub fn with_tokens(mut self, verifier: Arc<TokenVerifier>, realm: &str) -> Guard {
        self.tokens = Some(TokenMode {
            verifier,
            realm: realm.to_owned(),
        });
        self
    }

    /// Scoped tokens from `records` log in like users (their secret is the password).
    pub fn with_token_records(mut self, records: Arc<dyn TokenRecords>) -> Guard {
        self.records = Some(records);
        self
    }

    /// People who signed in with OpenID Connect log in with their personal access tokens, while
    /// `admission` admits them.
    pub fn with_people(mut self, admission: Admission) -> Guard {
        self.people = Some(admission);
        self
    }

    /// Whether any authentication method is configured.
    pub fn authenticates(&self) -> bool {
        self.basic.is_some() || self.client_certificates || self.tokens.is_some()
    }

    /// How an anonymous client is asked to authenticate, if it can be (without Basic or
    /// tokens, only a client certificate helps).
    pub fn challenge(&self, error: Option<BearerError>) -> Option<Challenge> {
        match (&self.tokens, &self.basic) {
            (Some(mode), _) => Some(Challenge::Bearer {
                realm: mode.realm.clone(),
                service: mode.verifier.service().to_owned(),
                error,
            }),
            (None, Some(basic)) => Some(Challenge::Basic {
                realm: basic.realm().to_owned(),
            }),
            (None, None) => None,
        }
    }

    /// Whether anonymous requests may do anything at all (public read, or no authentication).
    pub fn admits_anonymous(&self) -> bool {
        self.anonymous() != Anonymous::Deny
    }

    fn anonymous(&self) -> Anonymous {
        match self.policy.anonymous() {
            Anonymous::Everything if self.authenticates() => Anonymous::Deny,
            a => a,
        }
    }

    /// The client's address, if it is allowed to connect. `peer` is `None` when the server
    /// does not know it; only an allow-everything list admits such requests. A client that a
    /// trusted proxy cannot name is likewise admitted only by an allow-everything list, and is
    /// then known by the proxy's address.
    pub fn admit(
        &self,
        peer: Option<IpAddr>,
        forwarded: Option<&str>,
        x_forwarded_for: Option<&str>,
    ) -> Result<IpAddr, Refusal> {
        let everything = self.allow.is_everything();
        let unknown = || Refusal::Denied("the client address is unknown".into());
        let Some(peer) = peer else {
            return if everything {
                Ok(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
            } else {
                Err(unknown())
            };
        };
        match client_address(peer, forwarded, x_forwarded_for, &self.trusted_proxies) {
            Some(ip) if everything || self.allow.contains(ip) => Ok(ip),
            None if everything => Ok(peer.to_canonical()),
            Some(ip) => Err(Refusal::Denied(format!("address {ip} is not allowed"))),
            None => Err(unknown()),
        }
    }

    /// Who the request comes from: the client certificate when there is one, else the Bearer
    /// token (in token mode) or the Basic credentials, else nobody. Bad credentials are refused
    /// here, not treated as anonymous.
    pub async fn authenticate(
        &self,
        client: IpAddr,
        certificate: Option<&ClientCertificate>,
        authorization: Option<&str>,
    ) -> Result<Identity, Refusal> {
        if let (Some(cert), true) = (certificate, self.client_certificates) {
            let name = match &self.client_names {
                None => cert.names.first(),
                Some(patterns) => cert
                    .names
                    .iter()
                    .find(|n| patterns.iter().any(|p| p.matches(n))),
            };
            return match name {
                Some(n) => Ok(Identity::Certificate(n.clone())),
                None => Err(Refusal::Denied(format!(
                    "client certificate {:?} is not authorized",
                    cert.names.first().map(String::as_str).unwrap_or("")
                ))),
            };
        }
        let (scheme, credentials) =
            match authorization.map(str::trim).and_then(|h| h.split_once(' ')) {
                Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest.trim()),
                None => return Ok(Identity::Anonymous),
            };
        if let Some(mode) = &self.tokens {
            // Only tokens count on the API in token mode; anything else is asked for one.
            if scheme != "bearer" {
                return Ok(Identity::Anonymous);
            }
            return match mode.verifier.verify(credentials).await {
                Ok(v) => Ok(Identity::Token(Arc::new(Grant {
                    subject: v.subject,
                    access: v.access,
                }))),
                Err(e) => Err(Refusal::Unauthenticated {
                    challenge: Challenge::Bearer {
                        realm: mode.realm.clone(),
                        service: mode.verifier.service().to_owned(),
                        error: Some(BearerError::InvalidToken(e.to_string())),
                    },
                }),
            };
        }
        if scheme != "basic" || (self.basic.is_none() && self.records.is_none()) {
            return Ok(Identity::Anonymous); // e.g. a bearer token meant for someone else
        }
        let Some((user, password)) = crate::basic::parse_basic(authorization.unwrap_or("")) else {
            return Err(self.unauthenticated());
        };
        self.login(client, &user, &password).await
    }

    fn unauthenticated(&self) -> Refusal {
        self.unauthenticated_because(None)
    }

    fn unauthenticated_because(&self, error: Option<BearerError>) -> Refusal {
        match self.challenge(error) {
            Some(challenge) => Refusal::Unauthenticated { challenge },
            None => Refusal::Denied("a client certificate is required".into()),
        }
    }

    /// Whether `identity` may do `action` on `repository` (`None`: `/v2/`). Signing in never
    /// takes rights away: whatever anonymous requests may do (public read), every identity may
    /// do too, whatever the rules or its token grant it.
    pub fn may(&self, identity: &Identity, action: Action, repository: Option<&str>) -> bool {
        let anonymous = match self.anonymous() {
            Anonymous::Everything => true,
            Anonymous::Pull => action == Action::Pull,
            Anonymous::Deny => false,
        };
        anonymous
            || match (identity, repository) {
                (Identity::Anonymous, _) => false,
                (Identity::Token(_) | Identity::Machine(_), None) => action == Action::Pull,
                (Identity::Token(grant), Some(r)) => {
                    grant.access.iter().any(|s| s.allows(action, r))
                }
                (Identity::Machine(token), Some(r)) => token.allows(action, r),
                _ => self.policy.allows(identity, action, repository),
            }
    }

    /// Whether `identity` may list the catalog (which is then filtered by [`Guard::may`]).
    pub fn may_list(&self, identity: &Identity) -> bool {
        match identity {
            Identity::Token(grant) => {
                self.anonymous() != Anonymous::Deny
                    || grant.access.iter().any(Scope::allows_catalog)
            }
            Identity::Machine(token) => {
                self.anonymous() != Anonymous::Deny || token.allows_catalog()
            }
            _ => self.may(identity, Action::Pull, None),
        }
    }

    /// Whether some repositories may be hidden from `identity` (so listings must be filtered).
    pub fn restricts(&self, identity: &Identity) -> bool {
        let hides = match identity {
            Identity::Anonymous => false,
            Identity::Token(_) | Identity::Machine(_) => true,
            _ => self.policy.has_rules(),
        };
        hides && self.anonymous() == Anonymous::Deny
    }

    /// [`Guard::may`] as an answer: anonymous requests are asked to authenticate, others denied.
    pub fn authorize(
        &self,
        identity: &Identity,
        action: Action,
        repository: Option<&str>,
    ) -> Result<(), Refusal> {
        if self.may(identity, action, repository) {
            return Ok(());
        }
        Err(self.refuse(
            identity,
            match repository {
                Some(r) => format!("{identity} may not {action} {r}"),
                None => format!("{identity} may not {action}"),
            },
        ))
    }

    /// Whose rights filter the catalog for `identity`. A token of our own service stands for
    /// its subject as the subject is now (so a token for `registry:catalog:*` lists what its
    /// user or scoped token may pull); an external issuer's token lists what it grants.
    pub async fn catalog_identity(&self, identity: &Identity) -> Identity {
        match (identity, &self.tokens) {
            (Identity::Token(grant), Some(mode)) if mode.verifier.is_own() => self
                .identity_of(&grant.subject)
                .await
                .unwrap_or_else(|| identity.clone()),
            _ => identity.clone(),
        }
    }

    /// [`Guard::may_list`] as an answer.
    pub fn authorize_catalog(&self, identity: &Identity) -> Result<(), Refusal> {
        if self.may_list(identity) {
            Ok(())
        } else {
            Err(self.refuse(identity, format!("{identity} may not list the catalog")))
        }
    }

    fn refuse(&self, identity: &Identity, why: String) -> Refusal {
        match identity {
            Identity::Anonymous => self.unauthenticated(),
            // A token that grants too little: a new token with the right scope may do.
            Identity::Token(_) => {
                self.unauthenticated_because(Some(BearerError::InsufficientScope))
            }
            _ => Refusal::Denied(why),
        }
    }

    /// What `identity` may be granted of `requested` (for the token service): each scope's
    /// actions that it may do, never more than asked; scopes it may do nothing of are left out.
    pub fn grant(&self, identity: &Identity, requested: &[Scope]) -> Vec<Scope> {
        let mut granted = Vec::new();
        for scope in requested {
            match (scope.resource_type.as_str(), scope.name.as_str()) {
                ("registry", "catalog")
                    if scope.actions.iter().any(|a| a == "*") && self.may_list(identity) =>
                {
                    granted.push(Scope::catalog());
                }
                ("repository", name) => {
                    let wanted: Vec<Action> = if scope.actions.iter().any(|a| a == "*") {
                        vec![Action::Pull, Action::Push, Action::Delete]
                    } else {
                        scope
                            .actions
                            .iter()
                            .filter_map(|a| a.parse().ok())
                            .collect()
                    };
                    let allowed: Vec<Action> = wanted
                        .into_iter()
                        .filter(|a| self.may(identity, *a, Some(name)))
                        .collect();
                    if !allowed.is_empty() {
                        granted.push(Scope::repository(name, &allowed));
                    }
                }
                _ => {}
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests;
