//! What a client sends for token authentication never panics and is never accepted unless it is
//! a token the instance signed: `Bearer` values and JWTs of any content (headers with any
//! `alg`, `kid`, `x5c`), scope strings as the token endpoint takes them, token names and scopes
//! of scoped tokens, and the token endpoint's Basic credentials.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use registry_auth::token::records::{check_token_name, ScopePattern};
use registry_auth::token::{scope, KeyRing, SigningKey, TokenVerifier};

fn verifier() -> &'static (TokenVerifier, tokio::runtime::Runtime) {
    static V: OnceLock<(TokenVerifier, tokio::runtime::Runtime)> = OnceLock::new();
    V.get_or_init(|| {
        let (key, _) = SigningKey::generate().unwrap();
        let keys = Arc::new(KeyRing::fixed(key, None));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (TokenVerifier::own("fuzz", "fuzz", keys), runtime)
    })
}

fuzz_target!(|input: &str| {
    let (verifier, runtime) = verifier();
    // Nothing but our own signature verifies: any other input is refused.
    assert!(runtime.block_on(verifier.verify(input)).is_err());
    assert!(runtime.block_on(verifier.unseal::<String>(input, "fuzz")).is_err());
    let _ = scope::parse_requested(&[input]);
    let _ = input.parse::<scope::Scope>().map(|s| s.to_string());
    let _ = ScopePattern::parse(input);
    let _ = check_token_name(input);
});
