//! Test certificates made with rcgen: a CA, server certificates for 127.0.0.1/localhost, and
//! client certificates with chosen names and validity, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// When a certificate is valid.
#[derive(Clone, Copy)]
pub(crate) enum Validity {
    Now,
    Expired,
    NotYet,
}

/// A certificate authority.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub(crate) struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pair {
    /// Writes `<stem>.crt`-style files: returns (cert path, key path).
    pub(crate) fn write(&self, dir: &Path, cert_name: &str, key_name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join(cert_name), dir.join(key_name));
        std::fs::write(&c, &self.cert).unwrap();
        std::fs::write(&k, &self.key).unwrap();
        (c, k)
    }

    /// Certificate and key in one PEM (what reqwest's Identity wants).
    pub(crate) fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert, self.key).as_bytes()).unwrap()
    }
}

fn validity(params: &mut CertificateParams, v: Validity) {
    let (from, to) = match v {
        Validity::Now => ((2020, 1, 1), (2090, 1, 1)),
        Validity::Expired => ((2020, 1, 1), (2021, 1, 1)),
        Validity::NotYet => ((2090, 1, 1), (2091, 1, 1)),
    };
    params.not_before = date_time_ymd(from.0, from.1, from.2);
    params.not_after = date_time_ymd(to.0, to.1, to.2);
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, Validity::Now);
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// The CA certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub(crate) fn server(&self) -> Pair {
        self.server_for(&["localhost", "127.0.0.1"])
    }

    /// A server certificate for these names.
    pub(crate) fn server_for(&self, names: &[&str]) -> Pair {
        let names = names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, Validity::Now);
        self.sign(params)
    }

    /// A client certificate with these DNS SANs (none: `cn` is the only name).
    pub(crate) fn client(&self, sans: &[&str], cn: &str, v: Validity) -> Pair {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, v);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}
