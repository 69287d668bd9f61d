//! An external token issuer instead of the built-in one, configured as Distribution's
//! `auth.token` is (realm, service, issuer, and a root certificate bundle or a JWKS): a small
//! token server of the test's own at the realm (as docker_auth, GitLab or Harbor would be)
//! signs tokens with a key whose certificate chains to the bundle (`x5c`), with a bundle
//! certificate's libtrust `kid` (Distribution's own way), or with a key of a JWKS (a URL and a
//! file). skopeo goes through the whole flow against the real binary; a repository the issuer
//! does not grant, and tokens signed by a key the registry does not trust, are refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::pki::{Ca, Validity};
use common::tools::{run, run_fails, skopeo};
use common::{free_port, tar, write_oci_layout};
use sha2::{Digest as _, Sha256};

const ISSUER: &str = "ext-issuer";
const SERVICE: &str = "ext-registry";

/// How the test issuer names its key in the tokens it signs.
#[derive(Clone)]
enum Naming {
    /// `x5c`: the signing certificate (chaining to the registry's bundle).
    Chain(Vec<String>),
    /// `kid`.
    Kid(String),
}

struct Issuer {
    key_pem: String,
    naming: Naming,
    jwk: serde_json::Value,
    /// Sign with this instead (a key the registry does not trust), when set.
    rogue: Mutex<Option<(String, Naming)>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `GET /token`: alice (password `pw`) is granted what she asks for under `ext/`, nothing else.
async fn token(State(i): State<Arc<Issuer>>, headers: HeaderMap, uri: Uri) -> Response {
    let alice = format!("Basic {}", STANDARD.encode("alice:pw"));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(alice.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"ext\"")],
        )
            .into_response();
    }
    let mut access = Vec::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k != "scope" {
            continue;
        }
        for scope in v.split(' ') {
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            if let ["repository", name, actions] = parts[..] {
                if name.starts_with("ext/") {
                    let actions: Vec<&str> = actions.split(',').collect();
                    access.push(
                        serde_json::json!({"type": "repository", "name": name, "actions": actions}),
                    );
                }
            }
        }
    }
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "alice", "aud": SERVICE, "exp": now() + 300, "nbf": now() - 5,
        "iat": now(), "jti": format!("{}", now()), "access": access,
    });
    let (pem, naming) = match &*i.rogue.lock().unwrap() {
        Some((pem, naming)) => (pem.clone(), naming.clone()),
        None => (i.key_pem.clone(), i.naming.clone()),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    match naming {
        Naming::Chain(chain) => header.x5c = Some(chain),
        Naming::Kid(kid) => header.kid = Some(kid),
    }
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let jwt = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let body = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn jwks(State(i): State<Arc<Issuer>>) -> Response {
    let body = serde_json::json!({ "keys": [i.jwk] });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// Serves the issuer on a free port (in a thread of its own, for the test's lifetime).
fn serve_issuer(issuer: Arc<Issuer>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = Router::new()
                .route("/token", get(token))
                .route("/jwks", get(jwks))
                .with_state(issuer);
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}")
}

fn der_of(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// The libtrust key id Distribution puts in `kid`: the first 240 bits of the SHA-256 of the
/// key's SubjectPublicKeyInfo, base32, in groups of four separated by `:`.
fn libtrust_kid(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let b32 = base32(&hash[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut count, mut out) = (0u64, 0, String::new());
    for &b in bytes {
        bits = (bits << 8) | u64::from(b);
        count += 8;
        while count >= 5 {
            count -= 5;
            out.push(ALPHABET[((bits >> count) & 31) as usize] as char);
        }
    }
    out
}

/// A signing key (P-256) with a certificate from `ca`: (key PEM, certificate PEM, SPKI DER, JWK
/// coordinates).
fn signer(ca: &Ca) -> (String, String, Vec<u8>, (String, String)) {
    let pair = ca.client(&[], "token signer", Validity::Now);
    let key = rcgen::KeyPair::from_pem(&pair.key).unwrap();
    let raw = key.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    let (x, y) = (
        URL_SAFE_NO_PAD.encode(&raw[1..33]),
        URL_SAFE_NO_PAD.encode(&raw[33..]),
    );
    (
        pair.key.clone(),
        pair.cert.clone(),
        rcgen::PublicKeyData::subject_public_key_info(&key),
        (x, y),
    )
}

struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path, realm: &str, keys: &str) -> Registry {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\n[storage]\nurl = \"{}\"\n[auth]\nmode = \"token\"\n\
             [auth.token]\nrealm = \"{realm}\"\nservice = \"{SERVICE}\"\nissuer = \"{ISSUER}\"\n{keys}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_registry"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry { child, addr }
}

fn push(dir: &Path, registry: &Registry, repo: &str) -> Command {
    let layout = dir.join("layout");
    if !layout.exists() {
        write_oci_layout(&layout, "v1", &[tar(&[("f", b"external issuer\n")])]);
    }
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:pw",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/{repo}:v1", registry.addr),
    ])
}

/// The flow, then the refusals: a repository not granted; a token the registry cannot trust.
fn exercise(dir: &Path, registry: &Registry, issuer: &Issuer, rogue: (String, Naming)) {
    run(push(dir, registry, "ext/app"));
    let out = run(skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:pw",
        &format!("docker://{}/ext/app:v1", registry.addr),
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"Digest\""));
    run_fails(push(dir, registry, "other/app"));
    *issuer.rogue.lock().unwrap() = Some(rogue);
    run_fails(push(dir, registry, "ext/rogue"));
    *issuer.rogue.lock().unwrap() = None;
}

#[test]
fn x5c_chains_to_the_root_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("token CA");
    let (key, cert, _, (x, y)) = signer(&ca);
    let issuer = Arc::new(Issuer {
        key_pem: key,
        naming: Naming::Chain(vec![STANDARD.encode(der_of(&cert))]),
        jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "k"}),
        rogue: Mutex::new(None),
    });
    let realm = format!("{}/token", serve_issuer(issuer.clone()));
    let bundle = dir.path().join("token-ca.pem");
    std::fs::write(&bundle, ca.pem()).unwrap();
    let registry = start_registry(
        dir.path(),
        &realm,
        &format!("rootcertbundle = \"{}\"", bundle.display()),
    );
    // The challenge sends clients to the external realm.
    let url = format!("http://{}/v2/ext/app/tags/list", registry.addr);
    let r = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(reqwest::get(url))
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"].to_str().unwrap(),
        format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"repository:ext/app:pull\"")
    );
    // A certificate from another CA does not chain to the bundle.
    let other = Ca::new("someone else's CA");
    let (rogue_key, rogue_cert, _, _) = signer(&other);
    let rogue = (
        rogue_key,
        Naming::Chain(vec![STANDARD.encode(der_of(&rogue_cert))]),
    );
    exercise(dir.path(), &registry, &issuer, rogue);
}

#[test]
fn libtrust_kid_of_a_bundle_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("token CA");
    let (key, cert, spki, _) = signer(&ca);
    let issuer = Arc::new(Issuer {
        key_pem: key,
        naming: Naming::Kid(libtrust_kid(&spki)),
        jwk: serde_json::Value::Null,
        rogue: Mutex::new(None),
    });
    let realm = format!("{}/token", serve_issuer(issuer.clone()));
    // Distribution's setup: the bundle holds the signing certificate itself.
    let bundle = dir.path().join("token-cert.pem");
    std::fs::write(&bundle, &cert).unwrap();
    let registry = start_registry(
        dir.path(),
        &realm,
        &format!("rootcertbundle = \"{}\"", bundle.display()),
    );
    let (rogue_key, _, rogue_spki, _) = signer(&Ca::new("other"));
    let rogue = (rogue_key, Naming::Kid(libtrust_kid(&rogue_spki)));
    exercise(dir.path(), &registry, &issuer, rogue);
}

#[test]
fn jwks_by_url_and_by_file() {
    let ca = Ca::new("unused");
    let (key, _, _, (x, y)) = signer(&ca);
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "key-1", "alg": "ES256"});
    let issuer = Arc::new(Issuer {
        key_pem: key,
        naming: Naming::Kid("key-1".into()),
        jwk: jwk.clone(),
        rogue: Mutex::new(None),
    });
    let base = serve_issuer(issuer.clone());
    let realm = format!("{base}/token");
    let (rogue_key, _, _, _) = signer(&ca);
    // The same kid, another key: the signature is wrong. An unknown kid: no such key.
    for (source, rogue_naming) in [
        (
            format!("jwks = \"{base}/jwks\""),
            Naming::Kid("key-1".into()),
        ),
        (
            "jwks = \"jwks.json\"".to_owned(),
            Naming::Kid("key-2".into()),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("jwks.json"),
            serde_json::json!({ "keys": [jwk] }).to_string(),
        )
        .unwrap();
        let source = source.replace(
            "jwks.json",
            &dir.path().join("jwks.json").display().to_string(),
        );
        let registry = start_registry(dir.path(), &realm, &source);
        exercise(
            dir.path(),
            &registry,
            &issuer,
            (rogue_key.clone(), rogue_naming),
        );
    }
}
