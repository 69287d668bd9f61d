//! One issuance: the account (stored per directory, created with the contact and any External
//! Account Binding on first use), the order, the challenge answers (published in memory and in
//! the state so every node sharing it can answer), finalization with a fresh ECDSA P-256 key
//! and CSR (rcgen), and the checks of what the CA returned. Also when to renew: a third of the
//! lifetime left, or earlier when the CA's renewal information says so.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::cert::{to_pem, Certificate};
use crate::http::Client;
use crate::{ChallengeKind, Failure, Inner};

/// The state key of an HTTP-01 answer.
pub(crate) fn http01_key(token: &str) -> String {
    format!("challenges/http-01/{token}")
}

/// The state key of a TLS-ALPN-01 answer.
pub(crate) fn alpn_key(name: &str) -> String {
    format!("challenges/tls-alpn-01/{name}")
}

/// The state key of the account at `directory`.
fn account_key(directory: &str) -> String {
    let digest = Sha256::digest(directory.as_bytes());
    format!("accounts/{}.json", hex::encode(&digest[..8]))
}

/// How long the CA may take to validate and to issue.
const VALIDATION: Duration = Duration::from_secs(120);

/// `what` failed because of `e` and each of its causes (reqwest hides them in its message).
fn problem(what: &str, e: instant_acme::Error) -> Failure {
    let mut message = format!("{what}: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    Failure::new(message)
}

/// The handshake configuration that answers a TLS-ALPN-01 challenge for `name` (RFC 8737): a
/// self-signed certificate for the name with the key authorization's digest in the critical
/// acmeIdentifier extension, offered only for the `acme-tls/1` protocol.
pub(crate) fn alpn_config(
    name: &str,
    key_authorization: &str,
) -> Result<Arc<ServerConfig>, String> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(&digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Not `with_single_cert`: its check of the certificate refuses the critical extension the
    // challenge is made of.
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|e| e.to_string())?;
    let certified = CertifiedKey::new(vec![cert.der().clone()], signing);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![registry_auth::tls::ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The account at the settings' directory: the stored one, or a new one (stored at once).
async fn account(inner: &Inner, client: Client) -> Result<Account, Failure> {
    let key = account_key(&inner.settings.directory);
    if let Some(stored) = inner.state.get(&key).await? {
        match serde_json::from_slice::<AccountCredentials>(&stored) {
            Ok(credentials) => {
                return Account::builder_with_http(Box::new(client))
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| problem("cannot use the stored ACME account", e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "ACME: the stored account is unreadable; creating a new one")
            }
        }
    }
    let contact: Vec<String> = inner
        .settings
        .contact
        .iter()
        .map(|c| {
            if c.contains(':') {
                c.clone()
            } else {
                format!("mailto:{c}")
            }
        })
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = inner
        .settings
        .external_account
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.key_id.clone(), &e.hmac_key));
    let (account, credentials) = Account::builder_with_http(Box::new(client))
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            inner.settings.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| problem("cannot create an ACME account", e))?;
    let json = serde_json::to_vec(&credentials).expect("serializable");
    inner.state.put(&key, json).await?;
    tracing::info!(directory = %inner.settings.directory, account = %account.id(), "ACME: account created");
    Ok(account)
}

/// Orders a certificate for the settings' names; returns it as stored (key, then chain), after
/// checking it.
pub(crate) async fn obtain(inner: &Arc<Inner>) -> Result<Vec<u8>, Failure> {
    let (client, retry_after) = Client::new(&inner.settings)?;
    let mut published = Vec::new();
    let result = order(inner, client, &mut published).await;
    for key in published {
        let _ = inner.state.delete(&key).await;
    }
    inner.alpn.lock().expect("not poisoned").clear();
    inner.http01.lock().expect("not poisoned").clear();
    result.map_err(|mut f| {
        let after = retry_after.lock().expect("not poisoned").take();
        f.retry_after = after.and_then(|t| t.duration_since(SystemTime::now()).ok());
        f
    })
}

async fn order(
    inner: &Arc<Inner>,
    client: Client,
    published: &mut Vec<String>,
) -> Result<Vec<u8>, Failure> {
    let names = &inner.settings.names;
    tracing::info!(?names, directory = %inner.settings.directory, "ACME: ordering a certificate");
    let account = account(inner, client).await?;
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| problem("the CA refused the order", e))?;
    let kind = match inner.settings.challenge {
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| problem("cannot read an authorization", e))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(Failure::new(format!(
                    "the authorization for {} is {other:?}",
                    authz.identifier()
                )))
            }
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            Failure::new(format!("the CA offers no {kind:?} challenge for {name}"))
        })?;
        let key_authorization = challenge.key_authorization().as_str().to_owned();
        match inner.settings.challenge {
            ChallengeKind::Http01 => {
                let token = challenge.token.clone();
                inner
                    .http01
                    .lock()
                    .expect("not poisoned")
                    .insert(token.clone(), key_authorization.clone());
                if inner.state.is_shared() {
                    let key = http01_key(&token);
                    published.push(key.clone());
                    inner
                        .state
                        .put(&key, key_authorization.into_bytes())
                        .await?;
                }
            }
            ChallengeKind::TlsAlpn01 => {
                let config = alpn_config(&name, &key_authorization).map_err(|e| {
                    Failure::new(format!("cannot make the TLS-ALPN-01 certificate: {e}"))
                })?;
                inner
                    .alpn
                    .lock()
                    .expect("not poisoned")
                    .insert(name.clone(), config);
                if inner.state.is_shared() {
                    let key = alpn_key(&name);
                    published.push(key.clone());
                    inner
                        .state
                        .put(&key, key_authorization.into_bytes())
                        .await?;
                }
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| problem("the CA did not take the challenge answer", e))?;
    }
    let retries = RetryPolicy::new().timeout(VALIDATION);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| problem("validation failed", e))?;
    if status != OrderStatus::Ready {
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authz)) = authorizations.next().await {
            for c in &authz.challenges {
                if let Some(e) = &c.error {
                    why.push(format!("{}: {e}", authz.identifier()));
                }
            }
        }
        return Err(Failure::new(format!(
            "validation failed (order {status:?}): {}",
            if why.is_empty() {
                "no reason given".to_owned()
            } else {
                why.join("; ")
            }
        )));
    }
    let key = KeyPair::generate().map_err(|e| Failure::new(e.to_string()))?;
    let mut params =
        CertificateParams::new(names.clone()).map_err(|e| Failure::new(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Failure::new(format!("cannot make the CSR: {e}")))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| problem("the CA refused to finalize the order", e))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| problem("the CA did not issue the certificate", e))?;
    let pem = to_pem(&key.serialize_pem(), &chain);
    let cert = Certificate::from_pem(&pem)
        .map_err(|e| Failure::new(format!("the CA returned an unusable certificate: {e}")))?;
    if let Some(why) = cert.unfit_for(names, SystemTime::now()) {
        return Err(Failure::new(format!(
            "the CA returned a certificate that cannot be served: {why}"
        )));
    }
    Ok(pem)
}

/// When `cert` should be renewed: a third of its lifetime before the end, or earlier inside
/// the window the CA suggests (ARI), if its directory offers one.
pub(crate) async fn renewal_due(inner: &Arc<Inner>, cert: &Certificate) -> SystemTime {
    let by_lifetime = cert.renew_at();
    match suggested(inner, cert).await {
        Some(at) if at < by_lifetime => at,
        _ => by_lifetime,
    }
}

/// The start of the CA's suggested renewal window (RFC 9773), when it answers; asked at most
/// once per certificate and hour.
async fn suggested(inner: &Arc<Inner>, cert: &Certificate) -> Option<SystemTime> {
    let leaf = cert.certified.cert.first()?;
    let id = CertificateIdentifier::try_from(leaf).ok()?.into_owned();
    let key = (id.to_string(), SystemTime::now());
    {
        let cache = inner.ari.lock().expect("not poisoned");
        if let Some((cached_id, at, asked)) = &*cache {
            if *cached_id == key.0
                && asked.elapsed().unwrap_or_default() < Duration::from_secs(3600)
            {
                return *at;
            }
        }
    }
    let answer = async {
        let (client, _) = Client::new(&inner.settings).ok()?;
        let account = account(inner, client).await.ok()?;
        let (info, _) = account.renewal_info(&id).await.ok()?;
        let start = SystemTime::from(info.suggested_window.start);
        let end = SystemTime::from(info.suggested_window.end);
        // A point inside the window, the same on every node for this certificate.
        let span = end.duration_since(start).unwrap_or_default();
        let spread = u64::from_le_bytes(Sha256::digest(key.0.as_bytes())[..8].try_into().ok()?);
        Some(start + Duration::from_secs(spread % span.as_secs().max(1)))
    }
    .await;
    *inner.ari.lock().expect("not poisoned") = Some((key.0, answer, key.1));
    answer
}
