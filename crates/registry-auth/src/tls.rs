//! TLS for the server (rustls, TLS 1.2 and 1.3 only): certificate, key and client CA bundle
//! from PEM files, rebuilt when the files change, so renewals need no restart; client
//! certificates verified at the handshake (required, or optional) and named by their DNS SANs
//! (the subject's CN only when there is no SAN).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

use crate::watch::Watched;
use crate::Error;

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Handshakes without a valid client certificate fail.
    Required,
    /// A certificate, when given, must be valid and is the identity; none is fine too.
    Optional,
}

/// Where the server's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign client certificates, PEM; none: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// Required or optional client certificates (with `client_ca`).
    pub client_auth: ClientAuth,
}

/// How often the files' metadata is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Answers the TLS-ALPN-01 validation handshakes of an ACME certificate authority: the
/// configuration (challenge certificate, `acme-tls/1` only) for `name` while an order for it
/// is being validated, `None` otherwise. Such connections carry no requests.
pub trait AlpnChallenges: Send + Sync {
    /// The challenge configuration for `name`, if one is pending.
    fn challenge_config<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<ServerConfig>>> + Send + 'a>>;
}

/// The server configuration, rebuilt when the files change.
pub struct TlsConfig {
    config: Watched<ServerConfig>,
    challenges: Option<Arc<dyn AlpnChallenges>>,
}

impl TlsConfig {
    /// Loads the files now; errors name the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<TlsConfig, Error> {
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let config = Watched::new("TLS certificates", paths, RELOAD_CHECK, move || {
            let chain = read_certs(&files.cert)?;
            let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| Error::Invalid {
                what: "private key",
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
            let builder = client_policy(files.client_ca.as_ref(), files.client_auth)?;
            let mut config = builder
                .with_single_cert(chain, key)
                .map_err(|e| Error::Invalid {
                    what: "certificate (with its key)",
                    path: files.cert.clone(),
                    reason: format!("does not go with the key {}: {e}", files.key.display()),
                })?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(config)
        })?;
        Ok(TlsConfig {
            config,
            challenges: None,
        })
    }

    /// Certificates from `resolver` (an ACME manager), client certificates verified against
    /// `client_ca` (required or optional), and TLS-ALPN-01 answers from `challenges`.
    pub fn managed(
        client_ca: Option<PathBuf>,
        client_auth: ClientAuth,
        resolver: Arc<dyn ResolvesServerCert>,
        challenges: Arc<dyn AlpnChallenges>,
    ) -> Result<TlsConfig, Error> {
        let paths = client_ca.iter().cloned().collect();
        let config = Watched::new("TLS client CA", paths, RELOAD_CHECK, move || {
            let mut config = client_policy(client_ca.as_ref(), client_auth)?
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(config)
        })?;
        Ok(TlsConfig {
            config,
            challenges: Some(challenges),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.get()
    }

    /// Who answers TLS-ALPN-01 validation handshakes, for managed certificates.
    pub fn challenges(&self) -> Option<&Arc<dyn AlpnChallenges>> {
        self.challenges.as_ref()
    }
}

/// The protocol versions, and the client-certificate policy.
fn client_policy(
    client_ca: Option<&PathBuf>,
    client_auth: ClientAuth,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| Error::Invalid {
                    what: "client CA",
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| Error::Invalid {
                what: "client CA",
                path: ca.clone(),
                reason: e.to_string(),
            })?)
        }
    };
    Ok(builder)
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let invalid = |reason: String| Error::Invalid {
        what: "certificates",
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// A verified client certificate, as the guards see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The DNS names of its subject alternative names, or its subject's common name when it
    /// has none.
    pub names: Vec<String>,
}

impl ClientCertificate {
    /// Reads the names of a DER certificate (already verified by the handshake).
    pub fn from_der(der: &[u8]) -> ClientCertificate {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return ClientCertificate { names: Vec::new() };
        };
        let mut names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            names = cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect();
        }
        ClientCertificate { names }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    #[test]
    fn names_from_san_then_cn() {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["a.clients.example.com".into(), "b.example.com".into()])
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "ignored-cn");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            ClientCertificate::from_der(cert.der()).names,
            vec!["a.clients.example.com", "b.example.com"]
        );
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "builder");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            ClientCertificate::from_der(cert.der()).names,
            vec!["builder"]
        );
        assert!(ClientCertificate::from_der(b"garbage").names.is_empty());
    }

    #[test]
    fn loads_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
            client_auth: ClientAuth::Required,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let config = TlsConfig::load(files.clone()).unwrap();
        assert_eq!(config.current().alpn_protocols.len(), 2);
        std::fs::write(&files.key, "not a key").unwrap();
        let err = TlsConfig::load(files.clone()).err().unwrap().to_string();
        assert!(err.contains("key.pem"), "{err}");
        let mut with_ca = files.clone();
        with_ca.client_ca = Some(dir.path().join("missing-ca.pem"));
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let err = TlsConfig::load(with_ca).err().unwrap().to_string();
        assert!(err.contains("missing-ca.pem"), "{err}");
    }
}
