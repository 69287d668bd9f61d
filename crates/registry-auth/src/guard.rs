//! The guard of one instance, in the order it decides: is the address allowed, who is this
//! (client certificate, Basic credentials, or anonymous), and may they do this. Every answer is
//! a [`Refusal`] the HTTP layer turns into its status; this module knows nothing of HTTP types.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::basic::{parse_basic, BasicAuth};
use crate::brake::{Brake, BrakeSettings};
use crate::ip::{client_address, IpRanges};
use crate::pattern::NamePattern;
use crate::rules::{Action, Anonymous, Policy};
use crate::tls::ClientCertificate;
use crate::{Escaped, Identity};

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
    /// 429 `TOOMANYREQUESTS`: the brute-force brake is engaged for this user name from this
    /// address, or for the whole address.
    TooManyAttempts {
        /// When to come back.
        retry_after: Duration,
    },
}

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
        }
    }
}

impl GuardSettings {
    /// Whether anything is guarded (an authentication method or an allowlist).
    pub fn is_guarded(&self) -> bool {
        self.htpasswd.is_some() || self.client_certificates || !self.allow.is_everything()
    }

    /// The guard, or `None` when nothing is guarded (then no per-request work is needed).
    pub fn build(&self) -> Result<Option<Guard>, crate::Error> {
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
        Ok(Some(guard))
    }
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
    flights: Flights,
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
            flights: Mutex::new(HashMap::new()),
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
        // A password verified shortly before is not braked by someone else's failures (see
        // the brake's module documentation for when guessing makes it wait too).
        if basic.cached(&user, &password) {
            return match self.brake.remembered(client, &user) {
                Ok(()) => Ok(Identity::User(user)),
                Err(retry_after) => Err(Refusal::TooManyAttempts { retry_after }),
            };
        }
        if let Err(retry_after) = self.brake.check(client, &user) {
            return Err(Refusal::TooManyAttempts { retry_after });
        }
        // Concurrent logins with the same credentials (a client fetching layers in parallel
        // when the cache has just expired) share one verification and one brake slot.
        let key = basic.cache_key(&user, &password);
        let flight = Flight::join(&self.flights, key);
        let outcome = *flight
            .cell
            .get_or_init(|| async {
                let attempt = self.brake.begin(client, &user)?;
                let ok = basic.verify_uncached(&user, &password).await;
                let braked = attempt.finish(ok);
                if !ok {
                    tracing::info!(%client, user = %Escaped(&user), "failed login");
                }
                if let Err(pause) = braked {
                    tracing::warn!(%client, user = %Escaped(&user), ?pause, "too many failed logins; braking");
                }
                Ok(ok)
            })
            .await;
        drop(flight);
        match outcome {
            Ok(true) => Ok(Identity::User(user)),
            Ok(false) => Err(unauthenticated()),
            Err(retry_after) => Err(Refusal::TooManyAttempts { retry_after }),
        }
    }

    /// Whether `identity` may do `action` on `repository` (`None`: `/v2/` or the catalog).
    /// Signing in never takes rights away: whatever anonymous requests may do (public read),
    /// every identity may do too, whatever the rules grant it.
    pub fn may(&self, identity: &Identity, action: Action, repository: Option<&str>) -> bool {
        let anonymous = match self.anonymous() {
            Anonymous::Everything => true,
            Anonymous::Pull => action == Action::Pull,
            Anonymous::Deny => false,
        };
        anonymous
            || (!matches!(identity, Identity::Anonymous)
                && self.policy.allows(identity, action, repository))
    }

    /// Whether some repositories may be hidden from `identity` (so listings must be filtered).
    pub fn restricts(&self, identity: &Identity) -> bool {
        !matches!(identity, Identity::Anonymous)
            && self.policy.has_rules()
            && self.anonymous() == Anonymous::Deny
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

type Flights = Mutex<HashMap<[u8; 32], Arc<OnceCell<Result<bool, Duration>>>>>;

/// One shared verification; leaves the table when its last waiter is done or gone, so requests
/// cancelled mid-verification leave nothing behind.
struct Flight<'a> {
    table: &'a Flights,
    key: [u8; 32],
    cell: Arc<OnceCell<Result<bool, Duration>>>,
}

impl<'a> Flight<'a> {
    fn join(table: &'a Flights, key: [u8; 32]) -> Flight<'a> {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        let cell = t.entry(key).or_default().clone();
        Flight { table, key, cell }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let listed = t.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Let go of ours under the lock, so every waiter's count changes under it.
        let ours = std::mem::replace(&mut self.cell, Arc::new(OnceCell::new()));
        let done = ours.initialized();
        drop(ours);
        let idle = listed
            && t.get(&self.key)
                .is_some_and(|c| done || Arc::strong_count(c) == 1);
        if idle {
            t.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rule;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn admission() {
        let open = Guard::open();
        assert_eq!(open.admit(None, None, None), Ok(ip("0.0.0.0")));
        assert_eq!(
            open.admit(Some(ip("::ffff:10.0.0.1")), None, None),
            Ok(ip("10.0.0.1"))
        );
        let only_local = Guard::open()
            .with_allowed_addresses(IpRanges::parse(&["127.0.0.1"]).unwrap())
            .with_trusted_proxies(IpRanges::parse(&["127.0.0.1"]).unwrap());
        assert!(only_local.admit(None, None, None).is_err());
        assert!(only_local.admit(Some(ip("127.0.0.1")), None, None).is_ok());
        assert!(only_local.admit(Some(ip("127.0.0.2")), None, None).is_err());
        assert!(only_local
            .admit(Some(ip("127.0.0.1")), Some("for=unknown"), None)
            .is_err());
        let deny_all =
            Guard::open().with_allowed_addresses(IpRanges::parse(&["0.0.0.0/32"]).unwrap());
        assert!(deny_all.admit(Some(ip("127.0.0.1")), None, None).is_err());
        assert!(deny_all.admit(Some(ip("::1")), None, None).is_err());
    }

    #[tokio::test]
    async fn certificates_and_anonymous() {
        let names = vec![NamePattern::parse("*.ci.example.com").unwrap()];
        let guard = Guard::open().with_client_certificates(Some(names));
        let local = ip("127.0.0.1");
        let cert = |names: &[&str]| ClientCertificate {
            names: names.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            guard
                .authenticate(
                    local,
                    Some(&cert(&["x.example.com", "a.ci.example.com"])),
                    None
                )
                .await,
            Ok(Identity::Certificate("a.ci.example.com".into()))
        );
        assert!(matches!(
            guard
                .authenticate(local, Some(&cert(&["x.example.com"])), None)
                .await,
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(
            guard.authenticate(local, Some(&cert(&[])), None).await,
            Err(Refusal::Denied(_))
        ));
        // Authentication is configured, so anonymous requests are denied by default, and
        // without Basic there is nothing to challenge with.
        let anon = guard.authenticate(local, None, None).await.unwrap();
        assert_eq!(anon, Identity::Anonymous);
        assert!(matches!(
            guard.authorize(&anon, Action::Pull, None),
            Err(Refusal::Denied(_))
        ));
        let public = Guard::open()
            .with_client_certificates(None)
            .with_policy(Policy::new(Anonymous::Pull, Vec::new()));
        assert!(public.authorize(&anon, Action::Pull, Some("x")).is_ok());
        assert!(public.authorize(&anon, Action::Push, Some("x")).is_err());
        assert!(!public.restricts(&Identity::Certificate("c".into())));
        // With no guard configured at all, everyone may do everything.
        assert!(Guard::open()
            .authorize(&anon, Action::Delete, Some("x"))
            .is_ok());
    }

    #[test]
    fn signing_in_never_takes_rights_away() {
        let rules = vec![Rule::new(&["ann"], &[], &["team-a/**"], &["pull", "push"]).unwrap()];
        let public = Guard::open()
            .with_client_certificates(None)
            .with_policy(Policy::new(Anonymous::Pull, rules.clone()));
        let ann = Identity::User("ann".into());
        let bob = Identity::User("bob".into());
        for id in [&Identity::Anonymous, &ann, &bob] {
            assert!(public.may(id, Action::Pull, Some("team-b/app")), "{id}");
            assert!(!public.may(id, Action::Push, Some("team-b/app")), "{id}");
            assert!(!public.restricts(id), "{id} sees the whole catalog");
        }
        assert!(public.may(&ann, Action::Push, Some("team-a/app")));
        assert!(!public.may(&bob, Action::Push, Some("team-a/app")));
        let private = Guard::open()
            .with_client_certificates(None)
            .with_policy(Policy::new(Anonymous::Deny, rules));
        assert!(!private.may(&bob, Action::Pull, Some("team-b/app")));
        assert!(private.restricts(&bob));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_logins_share_one_verification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("ann:{}\n", bcrypt::hash("pw", 6).unwrap())).unwrap();
        // No cache at all, and a brake that allows two logins in flight.
        let basic = BasicAuth::open(&path, "r", Duration::ZERO).unwrap();
        let brake = BrakeSettings {
            attempts: 2,
            ..BrakeSettings::default()
        };
        let guard = Arc::new(Guard::open().with_basic(basic, brake));
        // "ann:pw" and "ann:px"
        let (right, wrong) = ("Basic YW5uOnB3", "Basic YW5uOnB4");
        let logins: Vec<_> = (0..24)
            .map(|_| {
                let g = guard.clone();
                tokio::spawn(
                    async move { g.authenticate(ip("127.0.0.1"), None, Some(right)).await },
                )
            })
            .collect();
        for l in logins {
            assert_eq!(l.await.unwrap(), Ok(Identity::User("ann".into())));
        }
        assert!(guard.flights.lock().unwrap().is_empty());
        // The same wrong guess in parallel is one failure, not 24.
        let guesses: Vec<_> = (0..24)
            .map(|_| {
                let g = guard.clone();
                tokio::spawn(
                    async move { g.authenticate(ip("127.0.0.1"), None, Some(wrong)).await },
                )
            })
            .collect();
        for g in guesses {
            assert!(matches!(
                g.await.unwrap(),
                Err(Refusal::Unauthenticated { .. })
            ));
        }
        assert!(guard.flights.lock().unwrap().is_empty());
        assert_eq!(
            guard.authenticate(ip("127.0.0.1"), None, Some(right)).await,
            Ok(Identity::User("ann".into()))
        );
    }
}
