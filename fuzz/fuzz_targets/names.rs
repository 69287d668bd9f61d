//! Names, tags, digests and references: parsing never panics, and what parses prints back as is.
#![no_main]
use libfuzzer_sys::fuzz_target;
use registry_core::{Digest, Reference, RepoName, Tag};

fuzz_target!(|s: &str| {
    if let Ok(n) = s.parse::<RepoName>() {
        assert_eq!(n.as_str(), s);
    }
    if let Ok(t) = s.parse::<Tag>() {
        assert_eq!(t.as_str(), s);
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
    }
    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s);
    }
});
