//! A certificate with its key as stored (one PEM: the key, then the chain, leaf first) and
//! the checks before it is served: the key belongs to the leaf, each certificate of the chain
//! is signed by the next, the leaf names every wanted name and is valid now. Nothing that
//! fails them is ever handed to a handshake.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A checked certificate, ready for handshakes.
#[derive(Clone)]
pub struct Certificate {
    /// The chain and key rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// The DNS names the leaf is valid for.
    pub names: Vec<String>,
    /// The leaf's issuer (distinguished name).
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("issuer", &self.issuer)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses and checks `pem` (a private key and a chain, leaf first): the key must belong to
    /// the leaf and each certificate must be signed by the next one.
    pub fn from_pem(pem: &[u8]) -> Result<Certificate, String> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
        let chain = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        Certificate::from_parts(chain, key)
    }

    /// Checks a chain (leaf first) with its key.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Certificate, String> {
        if chain.is_empty() {
            return Err("no certificate".to_owned());
        }
        let parsed = chain
            .iter()
            .map(|der| {
                X509Certificate::from_der(der)
                    .map(|(_, c)| c)
                    .map_err(|e| format!("unreadable certificate: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for pair in parsed.windows(2) {
            pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .map_err(|e| {
                    format!(
                        "the chain is broken: {} is not signed by {} ({e})",
                        pair[0].subject(),
                        pair[1].subject()
                    )
                })?;
        }
        let Summary {
            names,
            issuer,
            not_before,
            not_after,
        } = Summary::of(&parsed[0]);
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
        certified
            .keys_match()
            .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
        Ok(Certificate {
            certified: Arc::new(certified),
            names,
            issuer,
            not_before,
            not_after,
        })
    }

    /// Why it cannot serve `wanted` at `now`, if it cannot.
    pub fn unfit_for(&self, wanted: &[String], now: SystemTime) -> Option<String> {
        if let Some(missing) = wanted.iter().find(|w| !self.covers(w)) {
            return Some(format!("it does not name {missing}"));
        }
        if now < self.not_before {
            return Some("it is not valid yet".to_owned());
        }
        if now >= self.not_after {
            return Some("it has expired".to_owned());
        }
        None
    }

    /// Whether the leaf is valid for `name` (exactly, or by a wildcard for one label).
    pub fn covers(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(base) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
            None => *n == name,
        })
    }

    /// When to renew by the lifetime alone: when a third of it is left.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - life / 3
    }

    /// Seconds since the Unix epoch of the end of validity.
    pub fn expires_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// What a certificate says about itself, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Its DNS names.
    pub names: Vec<String>,
    /// Its issuer (distinguished name).
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Summary {
    /// The leaf (first certificate) of a PEM chain; no key needed.
    pub fn of_chain_pem(pem: &[u8]) -> Result<Summary, String> {
        let leaf = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or("holds no PEM certificate")?
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let (_, parsed) =
            X509Certificate::from_der(&leaf).map_err(|e| format!("unreadable certificate: {e}"))?;
        Ok(Summary::of(&parsed))
    }

    fn of(leaf: &X509Certificate<'_>) -> Summary {
        let mut names = Vec::new();
        if let Ok(Some(san)) = leaf.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(n) = name {
                    names.push(n.to_ascii_lowercase());
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Summary {
            names,
            issuer: leaf.issuer().to_string(),
            not_before: time(leaf.validity().not_before),
            not_after: time(leaf.validity().not_after),
        }
    }
}

impl std::fmt::Display for Summary {
    /// `names a, b; issuer …; expires 2027-03-01 12:00 UTC (in 89 days)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expires = time::OffsetDateTime::from(self.not_after);
        let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
        let when = expires.format(&format).unwrap_or_default();
        let relative = match self.not_after.duration_since(SystemTime::now()) {
            Ok(left) => format!("in {} days", left.as_secs() / 86400),
            Err(_) => "EXPIRED".to_owned(),
        };
        write!(
            f,
            "names {}; issuer {}; expires {when} ({relative})",
            if self.names.is_empty() {
                "none".to_owned()
            } else {
                self.names.join(", ")
            },
            self.issuer
        )
    }
}

impl Certificate {
    /// What it says about itself.
    pub fn summary(&self) -> Summary {
        Summary {
            names: self.names.clone(),
            issuer: self.issuer.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// The key and chain as stored: the key's PEM, then the chain's.
pub(crate) fn to_pem(key_pem: &str, chain_pem: &str) -> Vec<u8> {
    let mut out = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
    out.push_str(key_pem.trim_end());
    out.push('\n');
    out.push_str(chain_pem.trim_start());
    out.into_bytes()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A CA, an intermediate and a leaf for `names` valid `days`, as stored (key, then chain).
    pub(crate) fn issued(names: &[&str], days: i64) -> (Vec<u8>, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ca_issuer = Issuer::new(ca, ca_key);
        let mid_key = KeyPair::generate().unwrap();
        let mut mid = CertificateParams::new(Vec::<String>::new()).unwrap();
        mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        mid.distinguished_name
            .push(rcgen::DnType::CommonName, "test intermediate");
        let mid_cert = mid.signed_by(&mid_key, &ca_issuer).unwrap();
        let mid_issuer = Issuer::new(mid, mid_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        leaf.not_before = now - time::Duration::days(1);
        leaf.not_after = now + time::Duration::days(days);
        let leaf_cert = leaf.signed_by(&leaf_key, &mid_issuer).unwrap();
        let chain = format!("{}{}", leaf_cert.pem(), mid_cert.pem());
        (to_pem(&leaf_key.serialize_pem(), &chain), ca_cert.pem())
    }

    #[test]
    fn a_good_chain_is_read_with_its_names_and_dates() {
        let (pem, _) = issued(&["registry.test", "*.apps.test"], 90);
        let c = Certificate::from_pem(&pem).unwrap();
        assert_eq!(c.names, ["registry.test", "*.apps.test"]);
        assert!(c.issuer.contains("test intermediate"), "{}", c.issuer);
        let now = SystemTime::now();
        assert_eq!(
            c.unfit_for(&["registry.test".into(), "a.apps.test".into()], now),
            None
        );
        assert!(c
            .unfit_for(&["other.test".into()], now)
            .unwrap()
            .contains("other.test"));
        assert!(!c.covers("a.b.apps.test") && !c.covers("apps.test"));
        assert!(c
            .unfit_for(&[], now + Duration::from_secs(92 * 86400))
            .unwrap()
            .contains("expired"));
        let left = c.not_after.duration_since(c.renew_at()).unwrap().as_secs();
        assert_eq!(left, 91 * 86400 / 3);
    }

    #[test]
    fn wrong_keys_broken_chains_and_garbage_are_refused() {
        let (pem, _) = issued(&["registry.test"], 90);
        let (other, _) = issued(&["registry.test"], 90);
        let text = String::from_utf8(pem.clone()).unwrap();
        let other_text = String::from_utf8(other).unwrap();
        let key_end = "-----END PRIVATE KEY-----";
        let (key, chain) = text.split_once(key_end).unwrap();
        let (other_key, other_chain) = other_text.split_once(key_end).unwrap();
        // Another key.
        let swapped = format!("{other_key}{key_end}{chain}");
        let e = Certificate::from_pem(swapped.as_bytes()).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        // The leaf of one chain with the intermediate of another.
        let certs: Vec<&str> = chain.split_inclusive("-----END CERTIFICATE-----").collect();
        let other_certs: Vec<&str> = other_chain
            .split_inclusive("-----END CERTIFICATE-----")
            .collect();
        let mixed = format!("{key}{key_end}{}{}", certs[0], other_certs[1]);
        let e = Certificate::from_pem(mixed.as_bytes()).unwrap_err();
        assert!(e.contains("chain is broken"), "{e}");
        for bad in [&b""[..], b"garbage", &pem[..pem.len() / 2]] {
            assert!(Certificate::from_pem(bad).is_err());
        }
        let key_only = format!("{key}{key_end}\n");
        assert!(Certificate::from_pem(key_only.as_bytes())
            .unwrap_err()
            .contains("no certificate"));
    }
}
