//! What a client sends to the guards never panics: `Authorization` values, `Forwarded` and
//! `X-Forwarded-For` chains, certificate and repository names matched against patterns; and an
//! htpasswd file of any content parses line by line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use registry_auth::basic::parse_basic;
use registry_auth::htpasswd::Htpasswd;
use registry_auth::ip::{client_address, IpRanges};
use registry_auth::pattern::{NamePattern, RepoGlob};

fuzz_target!(|input: &str| {
    let mut parts = input.splitn(3, '\n');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let _ = parse_basic(a);
    let trusted = IpRanges::parse(&["127.0.0.0/8", "::1", "10.0.0.0/8"]).unwrap();
    let peer = "127.0.0.1".parse().unwrap();
    let _ = client_address(peer, Some(a), Some(b), &trusted);
    let _ = client_address(peer, None, Some(a), &trusted);
    let _ = IpRanges::parse(&[a]);
    for p in ["*.clients.example.com", "builder"] {
        let _ = NamePattern::parse(p).unwrap().matches(b);
    }
    for g in ["team-a/**", "*/app", "a/**/b", "lib*"] {
        let _ = RepoGlob::parse(g).unwrap().matches(b);
    }
    let _ = NamePattern::parse(c);
    let _ = Htpasswd::parse(input);
});
