//! The endpoint parser never panics on any path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    let _ = registry_http::Endpoint::parse(path);
});
