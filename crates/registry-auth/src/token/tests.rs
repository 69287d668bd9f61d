//! Tokens: issued and verified, and every way a bad one is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};

use super::*;
use crate::rules::Action;

const SERVICE: &str = "registry.example.com";

fn pair() -> (TokenIssuer, TokenVerifier) {
    let (key, _) = SigningKey::generate().unwrap();
    let keys = Arc::new(KeyRing::fixed(key, None));
    let issuer = TokenIssuer::new(keys.clone(), SERVICE, Duration::from_secs(300));
    (issuer, TokenVerifier::own(SERVICE, SERVICE, keys))
}

fn app_pull() -> Vec<Scope> {
    vec![Scope::repository("team/app", &[Action::Pull])]
}

#[tokio::test]
async fn issued_tokens_verify() {
    let (issuer, verifier) = pair();
    let issued = issuer.issue("ann", SERVICE, app_pull()).unwrap();
    assert_eq!(issued.expires_in, 300);
    assert!(issued.issued_at.ends_with('Z'), "{}", issued.issued_at);
    let v = verifier.verify(&issued.token).await.unwrap();
    assert_eq!(v.subject, "ann");
    assert_eq!(v.access, app_pull());
    assert!(v.access[0].allows(Action::Pull, "team/app"));
}

#[tokio::test]
async fn a_rotated_key_still_verifies_its_tokens() {
    // Keys in files, as `registry token init` and `rotate-key` leave them.
    let dir = tempfile::tempdir().unwrap();
    let (_, pem) = SigningKey::generate().unwrap();
    std::fs::write(dir.path().join(keys::CURRENT_KEY), pem).unwrap();
    let ring = Arc::new(KeyRing::open(dir.path()).unwrap());
    let verifier = TokenVerifier::own(SERVICE, SERVICE, ring.clone());
    let issuer = TokenIssuer::new(ring.clone(), SERVICE, Duration::from_secs(60));
    let before = issuer.issue("ann", SERVICE, vec![]).unwrap().token;
    assert!(verifier.verify(&before).await.is_ok());
    // Rotate: the current key becomes the previous one.
    std::fs::rename(
        dir.path().join(keys::CURRENT_KEY),
        dir.path().join(keys::PREVIOUS_KEY),
    )
    .unwrap();
    let (_, pem) = SigningKey::generate().unwrap();
    std::fs::write(dir.path().join(keys::CURRENT_KEY), pem).unwrap();
    let old_kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ring.current().kid() == old_kid {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ring.key_ids().len(), 2);
    let after = issuer.issue("ann", SERVICE, vec![]).unwrap().token;
    assert_ne!(
        jsonwebtoken::decode_header(&after).unwrap().kid.unwrap(),
        old_kid
    );
    assert!(verifier.verify(&after).await.is_ok());
    assert!(
        verifier.verify(&before).await.is_ok(),
        "the previous key still verifies"
    );
}

/// Signs arbitrary claims with a header of our choosing.
fn forge(header: &Header, claims: &serde_json::Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn claims(now: u64) -> serde_json::Value {
    serde_json::json!({
        "iss": SERVICE, "sub": "ann", "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
        "iat": now, "jti": "x", "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    })
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason() {
    let (issuer, verifier) = pair();
    let now = unix_now();
    let header = Header {
        kid: Some(issuer.keys().current().kid().to_owned()),
        ..Header::new(Algorithm::ES256)
    };
    let current = issuer.keys().current();
    let key = current.encoding();
    let good = forge(&header, &claims(now), key);
    assert!(verifier.verify(&good).await.is_ok());
    let refused = |token: String| {
        let verifier = &verifier;
        async move { verifier.verify(&token).await.unwrap_err().to_string() }
    };
    // Times, audience, issuer.
    let mut c = claims(now);
    c["exp"] = (now - 120).into();
    assert_eq!(
        refused(forge(&header, &c, key)).await,
        "the token has expired"
    );
    let mut c = claims(now);
    c["nbf"] = (now + 600).into();
    assert_eq!(
        refused(forge(&header, &c, key)).await,
        "the token is not valid yet"
    );
    let mut c = claims(now);
    c["aud"] = "other.example.com".into();
    assert_eq!(
        refused(forge(&header, &c, key)).await,
        "the token is for another service"
    );
    let mut c = claims(now);
    c["aud"] = serde_json::json!(["x", SERVICE]);
    assert!(
        verifier.verify(&forge(&header, &c, key)).await.is_ok(),
        "a list holding us"
    );
    let mut c = claims(now);
    c["iss"] = "evil".into();
    assert_eq!(
        refused(forge(&header, &c, key)).await,
        "the token is from another issuer"
    );
    let mut c = claims(now);
    c.as_object_mut().unwrap().remove("exp");
    let no_exp = forge(&header, &c, key);
    assert!(verifier.verify(&no_exp).await.is_err(), "no exp");
    // Another key, an unknown key id, no key id.
    let (stranger, _) = SigningKey::generate().unwrap();
    assert_eq!(
        refused(forge(&header, &claims(now), stranger.encoding())).await,
        "the token's signature is wrong"
    );
    let unknown = Header {
        kid: Some("nope".into()),
        ..header.clone()
    };
    assert_eq!(
        refused(forge(&unknown, &claims(now), key)).await,
        "the token's key is unknown"
    );
    let none = Header {
        kid: None,
        ..header.clone()
    };
    assert_eq!(
        refused(forge(&none, &claims(now), key)).await,
        "the token's key is unknown"
    );
    // HMAC keyed with the public key's bytes, and `alg: none`.
    let hmac = Header {
        kid: Some(issuer.keys().current().kid().to_owned()),
        ..Header::new(Algorithm::HS256)
    };
    let public = issuer.keys().current().kid().as_bytes().to_vec();
    assert_eq!(
        refused(forge(
            &hmac,
            &claims(now),
            &EncodingKey::from_secret(&public).unwrap()
        ))
        .await,
        "the token's algorithm is not its key's"
    );
    let body = URL_SAFE_NO_PAD.encode(claims(now).to_string());
    let alg_none = format!(
        "{}.{body}.",
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","kid":"{}"}}"#,
            issuer.keys().current().kid()
        ))
    );
    assert_eq!(refused(alg_none).await, "malformed token");
    // Malformed, truncated, oversized.
    for junk in [
        String::new(),
        "a.b".into(),
        "not a token".into(),
        good[..good.len() / 2].to_owned(),
        format!("{good}x"),
    ] {
        assert!(verifier.verify(&junk).await.is_err(), "{junk:?}");
    }
    assert_eq!(refused("a".repeat(20_000)).await, "the token is too long");
}

#[test]
fn libtrust_key_ids_look_like_distributions() {
    let kid = trusted::libtrust_kid(b"any public key");
    assert_eq!(kid.len(), 59, "{kid}");
    assert_eq!(kid.split(':').count(), 12);
    assert!(kid
        .chars()
        .all(|c| c == ':' || c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
}
