//! What `instance show` and `check` say about an instance's certificate: where it comes from
//! (files, or an ACME directory with its challenge and names) and the one served now (names,
//! issuer, expiry), read from the files or the ACME state. Never a key.

use registry_http::registry_acme::{Certificate, ChallengeKind, Summary, CERTIFICATE};
use registry_http::AcmeState;

use crate::config::Settings;

/// One line, or `None` for plain HTTP.
pub(crate) fn describe(s: &Settings) -> Option<String> {
    if let Some(files) = &s.tls {
        let summary = std::fs::read(&files.cert)
            .map_err(|e| e.to_string())
            .and_then(|pem| Summary::of_chain_pem(&pem));
        return Some(match summary {
            Ok(c) => format!("certificate {} ({c})", files.cert.display()),
            Err(e) => format!("certificate {}: {e}", files.cert.display()),
        });
    }
    let acme = s.acme.as_ref()?;
    let challenge = match acme.settings.challenge {
        ChallengeKind::TlsAlpn01 => "TLS-ALPN-01",
        ChallengeKind::Http01 => "HTTP-01",
    };
    let (stored, place) = match &acme.state {
        AcmeState::Directory(dir) => (
            match std::fs::read(dir.join(CERTIFICATE)) {
                Ok(pem) => Ok(Some(pem)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            dir.display().to_string(),
        ),
        AcmeState::Storage => (
            read_shared(s),
            "the storage, shared by its nodes".to_owned(),
        ),
    };
    let now = match stored {
        Ok(Some(pem)) => match Certificate::from_pem(&pem) {
            Ok(c) => c.summary().to_string(),
            Err(e) => {
                format!("the stored certificate is unusable ({e}); a new one is ordered at start")
            }
        },
        Ok(None) => "no certificate yet (ordered when `registry serve` starts)".to_owned(),
        Err(e) => format!("cannot read the state: {e}"),
    };
    Some(format!(
        "ACME {} by {challenge} for {}, state in {place}: {now}",
        acme.settings.directory,
        acme.settings.names.join(", "),
    ))
}

/// The certificate stored in the instance's storage.
fn read_shared(s: &Settings) -> Result<Option<Vec<u8>>, String> {
    use registry_http::registry_acme::StateStore;
    let opened = registry_core::open::open(&s.storage).map_err(|e| e.to_string())?;
    let store = opened.registry().object_store().clone();
    let state = StateStore::Objects(store, registry_core::layout::acme_root());
    crate::commands::run(
        async move { Ok(state.get(CERTIFICATE).await.map(|b| b.map(|b| b.to_vec()))) },
    )
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}
