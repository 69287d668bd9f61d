//! Certificates from an ACME certificate authority (RFC 8555: Let's Encrypt, ZeroSSL with
//! External Account Binding, step-ca, or any other by directory URL), obtained on first start,
//! stored, and renewed in the background when a third of the lifetime is left or when the
//! CA's renewal information (ARI, RFC 9773) says so.
//!
//! [`Acme`] is the one owner of an instance's certificate: rustls asks its
//! [`resolver`](Acme::resolver) for the certificate of each handshake, the server asks it for
//! TLS-ALPN-01 challenge answers ([`AlpnChallenges`]), and the plain listener asks it for
//! HTTP-01 answers ([`Acme::http01`]). A stored certificate is served only after it passed
//! every check of [`Certificate`]; until one exists, handshakes fail with an alert. Failures
//! are logged with the CA's problem document and retried with a doubling pause (at least what
//! `Retry-After` asks), and never touch what is being served. Where the state lives in shared
//! storage ([`StateStore::Objects`]), nodes take turns ordering through a lease and pick up
//! the certificate another node stored.
#![forbid(unsafe_code)]

mod cert;
mod http;
mod order;
mod state;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use registry_auth::tls::AlpnChallenges;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

pub use cert::{Certificate, Summary};

/// The key of the stored certificate (key, then chain) in the state.
pub const CERTIFICATE: &str = "certificate.pem";
pub use state::StateStore;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How the CA checks that the names are ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// TLS-ALPN-01 (RFC 8737): answered on the HTTPS listener itself, which must be port 443
    /// to the CA.
    TlsAlpn01,
    /// HTTP-01: answered on the plain listener, which must be port 80 to the CA.
    Http01,
}

/// An External Account Binding (ZeroSSL, some step-ca and corporate CAs).
#[derive(Clone)]
pub struct ExternalAccount {
    /// The key identifier the CA gave.
    pub key_id: String,
    /// The HMAC key the CA gave (decoded from its base64url form).
    pub hmac_key: Vec<u8>,
}

/// What to order, from whom, and how.
#[derive(Clone)]
pub struct AcmeSettings {
    /// The directory URL ([`LETS_ENCRYPT`] by default in the binary).
    pub directory: String,
    /// Contact email addresses for the account (the CA's expiry warnings go there).
    pub contact: Vec<String>,
    /// The DNS names of the certificate (the first is its subject).
    pub names: Vec<String>,
    /// The challenge answered.
    pub challenge: ChallengeKind,
    /// An External Account Binding, if the CA requires one.
    pub external_account: Option<ExternalAccount>,
    /// Extra PEM roots to trust for the directory's own HTTPS (a private CA such as step-ca).
    pub directory_roots: Option<PathBuf>,
    /// The first pause after a failure; it doubles up to [`AcmeSettings::max_retry`].
    pub retry: Duration,
    /// The longest pause after failures.
    pub max_retry: Duration,
    /// How often a node that waits for another to order looks at the shared storage.
    pub poll: Duration,
}

impl AcmeSettings {
    /// Settings for `names` at `directory` with the defaults: TLS-ALPN-01, a minute's first
    /// retry doubling up to six hours.
    pub fn new(directory: impl Into<String>, names: Vec<String>) -> AcmeSettings {
        AcmeSettings {
            directory: directory.into(),
            contact: Vec::new(),
            names,
            challenge: ChallengeKind::TlsAlpn01,
            external_account: None,
            directory_roots: None,
            retry: Duration::from_secs(60),
            max_retry: Duration::from_secs(6 * 3600),
            poll: Duration::from_secs(60),
        }
    }
}

impl AcmeSettings {
    /// Whether they can work: DNS names (a wildcard only as the first label), an http(s)
    /// directory URL.
    pub fn check(&self) -> Result<(), Error> {
        if self.names.is_empty() {
            return Err(Error::Settings(
                "ACME needs at least one DNS name".to_owned(),
            ));
        }
        for name in &self.names {
            if !valid_dns_name(name) {
                return Err(Error::Settings(format!(
                    "{name:?} is not a DNS name a certificate authority can validate"
                )));
            }
        }
        if !self.directory.starts_with("https://") && !self.directory.starts_with("http://") {
            return Err(Error::Settings(format!(
                "the ACME directory {:?} is not an http(s) URL",
                self.directory
            )));
        }
        Ok(())
    }
}

/// Why ACME could not be set up or its state not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings cannot work.
    #[error("{0}")]
    Settings(String),
    /// The state could not be read or written.
    #[error("ACME state: {0}")]
    State(String),
}

/// What an instance serves now, for `registry check` and metrics.
#[derive(Clone, Debug)]
pub struct Status {
    /// The certificate served, if there is one yet.
    pub certificate: Option<Certificate>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Told of each certificate that starts being served.
type Listener = Box<dyn Fn(&Certificate) + Send + Sync>;

/// The certificates of one instance: serves the current one, answers challenges, renews.
#[derive(Clone)]
pub struct Acme(Arc<Inner>);

struct Inner {
    settings: AcmeSettings,
    state: StateStore,
    /// This node's name in the lease.
    owner: String,
    current: RwLock<Option<Certificate>>,
    last_error: Mutex<Option<String>>,
    /// TLS-ALPN-01 answers being offered, by name.
    alpn: Mutex<HashMap<String, Arc<ServerConfig>>>,
    /// HTTP-01 answers being offered: token → key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// The last renewal information: certificate, suggested moment, when asked.
    ari: Mutex<Option<(String, Option<SystemTime>, SystemTime)>>,
    /// Notified when the certificate changes (metrics).
    on_change: Mutex<Vec<Listener>>,
}

/// How long the ordering lease lasts (an order takes seconds to minutes).
const LEASE_TTL: Duration = Duration::from_secs(600);
/// How long a writer of the lease waits for a rival's write before reading it back.
const LEASE_SETTLE: Duration = Duration::from_secs(1);

impl Acme {
    /// The manager of `settings`' certificate with its state in `state`. A certificate already
    /// stored in a directory is loaded now, so handshakes work from the first connection; one
    /// in shared storage on [`Acme::spawn`]'s first look.
    pub fn new(settings: AcmeSettings, state: StateStore) -> Result<Acme, Error> {
        settings.check()?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| Error::Settings(e.to_string()))?;
        let inner = Inner {
            owner: hex::encode(id),
            current: RwLock::new(None),
            last_error: Mutex::new(None),
            alpn: Mutex::new(HashMap::new()),
            http01: Mutex::new(HashMap::new()),
            ari: Mutex::new(None),
            on_change: Mutex::new(Vec::new()),
            settings,
            state,
        };
        if let StateStore::Directory(dir) = &inner.state {
            if let Ok(pem) = std::fs::read(dir.join(CERTIFICATE)) {
                inner.consider(&pem, "stored");
            }
        }
        Ok(Acme(Arc::new(inner)))
    }

    /// The settings.
    pub fn settings(&self) -> &AcmeSettings {
        &self.0.settings
    }

    /// The certificate served now, and the last failure.
    pub fn status(&self) -> Status {
        Status {
            certificate: self.0.current.read().expect("not poisoned").clone(),
            last_error: self.0.last_error.lock().expect("not poisoned").clone(),
        }
    }

    /// Calls `f` with every certificate that starts being served (and now with the current).
    pub fn on_change(&self, f: impl Fn(&Certificate) + Send + Sync + 'static) {
        if let Some(c) = &*self.0.current.read().expect("not poisoned") {
            f(c);
        }
        self.0
            .on_change
            .lock()
            .expect("not poisoned")
            .push(Box::new(f));
    }

    /// What rustls asks for the certificate of each (non-challenge) handshake.
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.0.clone()))
    }

    /// What the server asks for TLS-ALPN-01 handshakes.
    pub fn alpn_challenges(&self) -> Arc<dyn AlpnChallenges> {
        Arc::new(Alpn(self.0.clone()))
    }

    /// The key authorization to answer at `/.well-known/acme-challenge/<token>`, if the CA
    /// is validating one of our orders with that token (on any node sharing the state).
    pub async fn http01(&self, token: &str) -> Option<String> {
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        if let Some(ka) = self.0.http01.lock().expect("not poisoned").get(token) {
            return Some(ka.clone());
        }
        if !self.0.state.is_shared() {
            return None;
        }
        let stored = self.0.state.get(&order::http01_key(token)).await.ok()??;
        String::from_utf8(stored.to_vec()).ok()
    }

    /// Runs the upkeep until every [`Acme`] handle is dropped: loads what is stored, orders
    /// when nothing fit is, renews in time, retries failures.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(upkeep(weak))
    }
}

/// Whether `name` is a DNS name (a wildcard only in the first label).
fn valid_dns_name(name: &str) -> bool {
    let body = name.strip_prefix("*.").unwrap_or(name);
    !body.is_empty()
        && body.len() <= 253
        && (body.contains('.') || body == "localhost")
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Inner {
    /// Serves `pem` if it passes the checks and is newer than what is served; `true` if it
    /// does.
    fn consider(&self, pem: &[u8], origin: &str) -> bool {
        let cert = match Certificate::from_pem(pem) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(names = ?self.settings.names, state = %self.state.describe(), "ACME: the {origin} certificate is not used: {e}");
                return false;
            }
        };
        if let Some(why) = cert.unfit_for(&self.settings.names, SystemTime::now()) {
            tracing::info!(names = ?self.settings.names, "ACME: the {origin} certificate is not used: {why}");
            return false;
        }
        let mut current = self.current.write().expect("not poisoned");
        if current
            .as_ref()
            .is_some_and(|c| c.not_after >= cert.not_after && c.names == cert.names)
        {
            return false;
        }
        tracing::info!(
            names = ?cert.names,
            issuer = %cert.issuer,
            expires = %time::OffsetDateTime::from(cert.not_after),
            "ACME: serving the {origin} certificate"
        );
        for f in self.on_change.lock().expect("not poisoned").iter() {
            f(&cert);
        }
        *current = Some(cert);
        true
    }

    fn current(&self) -> Option<Certificate> {
        self.current.read().expect("not poisoned").clone()
    }
}

struct Resolver(Arc<Inner>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcmeResolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.0.current.read().expect("not poisoned");
        if current.is_none() {
            tracing::debug!(names = ?self.0.settings.names, "TLS handshake refused: no certificate from the ACME CA yet");
        }
        current.as_ref().map(|c| c.certified.clone())
    }
}

struct Alpn(Arc<Inner>);

impl AlpnChallenges for Alpn {
    fn challenge_config<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<ServerConfig>>> + Send + 'a>> {
        Box::pin(async move {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.0.alpn.lock().expect("not poisoned").get(&name) {
                return Some(c.clone());
            }
            if !self.0.state.is_shared() || !self.0.settings.names.contains(&name) {
                return None;
            }
            let ka = self.0.state.get(&order::alpn_key(&name)).await.ok()??;
            let ka = String::from_utf8(ka.to_vec()).ok()?;
            order::alpn_config(&name, &ka).ok()
        })
    }
}

/// The upkeep loop; ends when the manager is dropped.
async fn upkeep(weak: Weak<Inner>) {
    let mut failures: u32 = 0;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let pause = match step(&inner).await {
            Ok(Next::Settled(pause)) => {
                failures = 0;
                *inner.last_error.lock().expect("not poisoned") = None;
                pause
            }
            // Another node orders: our own failures still count.
            Ok(Next::Waiting(pause)) => pause,
            Err(failure) => {
                failures = failures.saturating_add(1);
                let backoff = inner
                    .settings
                    .retry
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(inner.settings.max_retry);
                let pause = failure.retry_after.map_or(backoff, |r| r.max(backoff));
                tracing::warn!(
                    names = ?inner.settings.names,
                    directory = %inner.settings.directory,
                    retry_in = ?pause,
                    "ACME: {}", failure.message
                );
                *inner.last_error.lock().expect("not poisoned") = Some(failure.message);
                pause
            }
        };
        drop(inner);
        tokio::time::sleep(pause).await;
    }
}

/// A failed attempt: what to log, and the pause the CA asked for.
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(e.to_string())
    }
}

/// What one look leads to.
enum Next {
    /// A certificate is served and not due (or was just obtained): look again after this.
    Settled(Duration),
    /// Another node holds the ordering lease: look for its certificate after this.
    Waiting(Duration),
}

/// One look: takes a newer stored certificate, orders one when none fit is served or renewal
/// is due; returns how long to sleep.
async fn step(inner: &Arc<Inner>) -> Result<Next, Failure> {
    if let Some(pem) = inner.state.get(CERTIFICATE).await? {
        inner.consider(&pem, "stored");
    }
    let now = SystemTime::now();
    let poll = if inner.state.is_shared() {
        inner.settings.poll
    } else {
        Duration::MAX
    };
    if let Some(cert) = inner.current() {
        let due = order::renewal_due(inner, &cert).await;
        if now < due {
            let wait = due.duration_since(now).unwrap_or_default();
            // Shared state: look for another node's renewal meanwhile.
            return Ok(Next::Settled(
                wait.min(poll).min(Duration::from_secs(86400)),
            ));
        }
    }
    if !inner
        .state
        .take_lease(&inner.owner, LEASE_TTL, settle(inner))
        .await?
    {
        tracing::info!(names = ?inner.settings.names, "ACME: another node is ordering; waiting for its certificate");
        return Ok(Next::Waiting(inner.settings.poll));
    }
    let result = order::obtain(inner).await;
    if let Err(e) = inner.state.release_lease(&inner.owner).await {
        tracing::warn!(error = %e, "ACME: cannot release the ordering lease");
    }
    let pem = result?;
    inner.state.put(CERTIFICATE, pem.clone()).await?;
    inner.consider(&pem, "new");
    Ok(Next::Settled(Duration::from_secs(1)))
}

fn settle(inner: &Inner) -> Duration {
    if inner.state.is_shared() {
        LEASE_SETTLE
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_directories_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let state = || StateStore::Directory(dir.path().to_owned());
        let ok = |names: &[&str]| {
            Acme::new(
                AcmeSettings::new(LETS_ENCRYPT, names.iter().map(|n| n.to_string()).collect()),
                state(),
            )
        };
        assert!(ok(&["registry.example.com", "*.example.com", "localhost"]).is_ok());
        for bad in [
            &[][..],
            &["bad name"],
            &["-x.example.com"],
            &["a..b"],
            &["single"],
            &["*"],
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        let mut s = AcmeSettings::new("ftp://x", vec!["a.example".into()]);
        assert!(Acme::new(s.clone(), state()).is_err());
        s.directory = LETS_ENCRYPT_STAGING.into();
        assert!(Acme::new(s, state()).is_ok());
    }

    #[tokio::test]
    async fn a_stored_certificate_is_served_from_the_start_and_http01_tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = cert::tests::issued(&["registry.test"], 90);
        std::fs::write(dir.path().join(CERTIFICATE), &pem).unwrap();
        let acme = Acme::new(
            AcmeSettings::new(LETS_ENCRYPT, vec!["registry.test".into()]),
            StateStore::Directory(dir.path().to_owned()),
        )
        .unwrap();
        let status = acme.status();
        assert_eq!(status.certificate.unwrap().names, ["registry.test"]);
        // A stored certificate for other names is not served.
        let other = Acme::new(
            AcmeSettings::new(LETS_ENCRYPT, vec!["other.test".into()]),
            StateStore::Directory(dir.path().to_owned()),
        )
        .unwrap();
        assert!(other.status().certificate.is_none());
        acme.0
            .http01
            .lock()
            .unwrap()
            .insert("tok_en-1".into(), "tok_en-1.thumb".into());
        assert_eq!(
            acme.http01("tok_en-1").await.as_deref(),
            Some("tok_en-1.thumb")
        );
        for bad in ["", "../certificate.pem", "a/b", "other"] {
            assert_eq!(acme.http01(bad).await, None, "{bad}");
        }
    }
}
