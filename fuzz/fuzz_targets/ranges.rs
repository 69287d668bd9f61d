//! `Range` and `Content-Range` parsing never panics, and every range it yields lies in the blob.
#![no_main]
use libfuzzer_sys::fuzz_target;
use registry_http::range::{parse_content_range, parse_range, RangeRequest};

fuzz_target!(|input: (&str, u64)| {
    let (header, size) = input;
    if let RangeRequest::Partial(r) = parse_range(header, size) {
        assert!(r.start < r.end && r.end <= size);
    }
    if let Some((a, b)) = parse_content_range(header) {
        assert!(a <= b);
    }
});
