//! The guard of one instance, in the order it decides: is the address allowed, who is this
//! (client certificate, Basic credentials, or anonymous), and may they do this. Every answer is
//! a [`Refusal`] the HTTP layer turns into its status; this module knows nothing of HTTP types.

use std::net::IpAddr;
use std::time::Duration;

use crate::basic::{parse_basic, BasicAuth};
use crate::brake::{Brake, BrakeSettings};
use crate::ip::{client_address, IpRanges};
use crate::pattern::NamePattern;
use crate::rules::{Action, Anonymous, Policy};
use crate::tls::ClientCertificate;
use crate::Identity;

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `DENIED`: the address, the certificate's name, or the identity's rights.
    Denied(String),
    /// 401 `UNAUTHORIZED` with `WWW-Authenticate: Basic realm="<realm>"`.
    Unauthenticated {
        /// The realm to challenge with.
        realm: String,
    },
    /// 429 `TOOMANYREQUESTS`: the brute-force brake is engaged for this address.
    TooManyAttempts {
        /// When to come back.
        retry_after: Duration,
    },
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

    /// Whether any authentication method is configured.
    pub fn authenticates(&self) -> bool {
        self.basic.is_some() || self.client_certificates
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
            return match everything {
                true => Ok(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                false => Err(unknown()),
            };
        };
        match client_address(peer, forwarded, x_forwarded_for, &self.trusted_proxies) {
            Some(ip) if everything || self.allow.contains(ip) => Ok(ip),
            None if everything => Ok(peer.to_canonical()),
            Some(ip) => Err(Refusal::Denied(format!("address {ip} is not allowed"))),
            None => Err(unknown()),
        }
    }

    /// Who the request comes from: the client certificate when there is one, else the Basic
    /// credentials, else nobody. Bad credentials are refused here, not treated as anonymous.
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
        let (Some(basic), Some(header)) = (&self.basic, authorization) else {
            return Ok(Identity::Anonymous);
        };
        let unauthenticated = || Refusal::Unauthenticated {
            realm: basic.realm().to_owned(),
        };
        if !header
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("basic ")
        {
            return Ok(Identity::Anonymous); // e.g. a bearer token meant for someone else
        }
        let Some((user, password)) = parse_basic(header) else {
            return Err(unauthenticated());
        };
        // An engaged brake refuses everything, remembered passwords included, so that nothing
        // can be learned from it; otherwise a remembered password costs no attempt.
        if let Some(retry_after) = self.brake.engaged(client) {
            return Err(Refusal::TooManyAttempts { retry_after });
        }
        if basic.cached(&user, &password) {
            return Ok(Identity::User(user));
        }
        if let Err(retry_after) = self.brake.begin(client) {
            return Err(Refusal::TooManyAttempts { retry_after });
        }
        let ok = basic.verify(&user, &password).await;
        let braked = self.brake.finish(client, ok);
        if ok {
            return Ok(Identity::User(user));
        }
        tracing::info!(%client, user = %user, "failed login");
        match braked {
            Ok(()) => Err(unauthenticated()),
            Err(retry_after) => {
                tracing::warn!(%client, pause = ?retry_after, "too many failed logins; braking");
                Err(Refusal::TooManyAttempts { retry_after })
            }
        }
    }

    /// Whether `identity` may do `action` on `repository` (`None`: `/v2/` or the catalog).
    pub fn may(&self, identity: &Identity, action: Action, repository: Option<&str>) -> bool {
        match identity {
            Identity::Anonymous => match self.anonymous() {
                Anonymous::Everything => true,
                Anonymous::Pull => action == Action::Pull,
                Anonymous::Deny => false,
            },
            _ => self.policy.allows(identity, action, repository),
        }
    }

    /// Whether some repositories may be hidden from `identity` (so listings must be filtered).
    pub fn restricts(&self, identity: &Identity) -> bool {
        !matches!(identity, Identity::Anonymous) && self.policy.has_rules()
    }

    /// [`Guard::may`] as an answer: anonymous requests are asked to log in, others denied.
    pub fn authorize(
        &self,
        identity: &Identity,
        action: Action,
        repository: Option<&str>,
    ) -> Result<(), Refusal> {
        if self.may(identity, action, repository) {
            return Ok(());
        }
        match (identity, &self.basic) {
            (Identity::Anonymous, Some(basic)) => Err(Refusal::Unauthenticated {
                realm: basic.realm().to_owned(),
            }),
            (Identity::Anonymous, None) => {
                Err(Refusal::Denied("a client certificate is required".into()))
            }
            (id, _) => Err(Refusal::Denied(match repository {
                Some(r) => format!("{id} may not {action} {r}"),
                None => format!("{id} may not {action}"),
            })),
        }
    }
}
