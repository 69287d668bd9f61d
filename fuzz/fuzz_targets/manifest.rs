//! Manifest parsing never panics, whatever the body and Content-Type.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Option<&str>, &[u8])| {
    let (content_type, body) = input;
    if let Ok(m) = registry_core::manifest::parse(content_type, body) {
        let _ = m.required_references().count();
    }
});
