//! `registry cert`: a small certificate authority per instance, so that TLS and mutual TLS need
//! no separate CA server. The CA lives in the instance's `tls/` directory (`ca.pem`, and
//! `ca-key.pem` with mode 0600); it signs the instance's server certificate and client
//! certificates, which `client` writes in Docker's `certs.d` layout (`ca.crt`, `client.cert`,
//! `client.key`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use crate::instance::{write_file, write_private};

/// The CA's files in an instance directory.
pub(crate) fn ca_paths(instance_dir: &Path) -> (PathBuf, PathBuf) {
    let tls = instance_dir.join("tls");
    (tls.join("ca.pem"), tls.join("ca-key.pem"))
}

/// A random positive serial number (RFC 5280: at most 20 bytes, unpredictable).
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the system's random source");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Valid from an hour ago (clock skew) for `days`.
fn validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 || days > 36500 {
        bail!("--days must be between 1 and 36500");
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    params.serial_number = Some(serial());
    Ok(())
}

/// Creates the instance's CA; refuses to replace one unless `force` (every certificate it
/// signed would stop being trusted).
pub(crate) fn init_ca(
    instance_dir: &Path,
    name: &str,
    days: u32,
    force: bool,
) -> anyhow::Result<PathBuf> {
    let (cert_path, key_path) = ca_paths(instance_dir);
    if cert_path.exists() && !force {
        bail!(
            "a CA exists already ({}); replacing it invalidates every certificate it signed: use --force",
            cert_path.display()
        );
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_file(&cert_path, cert.pem().as_bytes())?;
    Ok(cert_path)
}

/// The instance's CA, to sign with.
fn load_ca(instance_dir: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, String)> {
    let (cert_path, key_path) = ca_paths(instance_dir);
    if !cert_path.exists() {
        bail!(
            "no CA in {} (create one with `registry cert init-ca`)",
            cert_path.parent().unwrap_or(instance_dir).display()
        );
    }
    let cert = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?;
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key)
        .with_context(|| format!("{} is not a private key", key_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&cert, key)
        .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
    Ok((issuer, cert))
}

/// Signs a server certificate for `hosts` (DNS names or IP addresses); returns the paths of
/// the certificate (with the CA appended, as a chain) and its key in the instance's `tls/`.
pub(crate) fn server(
    instance_dir: &Path,
    hosts: &[String],
    days: u32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if hosts.is_empty() {
        bail!("name at least one host name or IP address");
    }
    for h in hosts {
        crate::config::parse_hostname(h)?;
    }
    let (issuer, ca_pem) = load_ca(instance_dir)?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, &hosts[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let tls = instance_dir.join("tls");
    let (cert_path, key_path) = (tls.join("server.pem"), tls.join("server-key.pem"));
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_file(&cert_path, format!("{}{}", cert.pem(), ca_pem).as_bytes())?;
    Ok((cert_path, key_path))
}

/// Signs a client certificate for `name` (its DNS name and common name) and writes Docker's
/// `certs.d` layout into `out`: `ca.crt`, `client.cert`, `client.key` (0600).
pub(crate) fn client(instance_dir: &Path, name: &str, out: &Path, days: u32) -> anyhow::Result<()> {
    registry_auth::pattern::NamePattern::parse(name)
        .ok()
        .filter(|_| !name.contains('*'))
        .with_context(|| {
            format!("{name:?} is not a client name (DNS labels, like ci.example.com or builder)")
        })?;
    let (issuer, ca_pem) = load_ca(instance_dir)?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_private(&out.join("client.key"), key.serialize_pem().as_bytes())?;
    write_file(&out.join("client.cert"), cert.pem().as_bytes())?;
    write_file(&out.join("ca.crt"), ca_pem.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_servers_and_clients() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), "Test CA", 30, false).unwrap();
        assert!(
            init_ca(dir.path(), "Again", 30, false).is_err(),
            "kept unless forced"
        );
        let (cert, key) = server(
            dir.path(),
            &["reg.example.com".into(), "127.0.0.1".into()],
            30,
        )
        .unwrap();
        let out = dir.path().join("client");
        client(dir.path(), "ci.example.com", &out, 30).unwrap();
        // The server certificate serves TLS and verifies client certificates from the CA.
        let files = registry_auth::tls::TlsFiles {
            cert,
            key,
            client_ca: Some(ca),
            client_auth: registry_auth::tls::ClientAuth::Required,
        };
        registry_auth::tls::TlsConfig::load(files).unwrap();
        let pem = std::fs::read(out.join("client.cert")).unwrap();
        let der = rustls_pki_der(&pem);
        let identity = registry_auth::tls::ClientCertificate::from_der(&der);
        assert_eq!(identity.names, ["ci.example.com"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["tls/ca-key.pem", "tls/server-key.pem", "client/client.key"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        assert!(client(dir.path(), "*.example.com", &out, 30).is_err());
        assert!(server(dir.path(), &["bad host".into()], 30).is_err());
        assert!(server(dir.path(), &["ok.example.com".into()], 0).is_err());
    }

    fn rustls_pki_der(pem: &[u8]) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem).unwrap()
    }
}
