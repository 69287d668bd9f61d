//! Parsers for the `Range` header of blob reads (RFC 9110) and the `Content-Range` header of
//! chunked uploads (`<start>-<end>`, inclusive). Both are pure and total: any input yields a value.

use std::ops::Range;

/// What a `Range` header asks of a blob of a known size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole blob (no header, several ranges, or syntax the server may ignore).
    Full,
    /// Serve this part with 206.
    Partial(Range<u64>),
    /// Nothing of the blob is in the range: 416.
    Unsatisfiable,
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Interprets a `Range` header against a blob of `size` bytes.
pub fn parse_range(header: &str, size: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size > 0 => RangeRequest::Partial(size.saturating_sub(n)..size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (a, "") => match number(a) {
            Some(a) if a < size => RangeRequest::Partial(a..size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (a, b) => match (number(a), number(b)) {
            (Some(a), Some(b)) if a <= b && a < size => {
                RangeRequest::Partial(a..b.min(size - 1) + 1)
            }
            (Some(a), Some(b)) if a <= b => RangeRequest::Unsatisfiable,
            _ => RangeRequest::Full,
        },
    }
}

/// Whether a `Range` may be honoured under the request's `If-Range` (RFC 9110 §13.1.5): only
/// when there is none, or it is exactly the representation's strong `etag`. A weak tag or a
/// date (no `Last-Modified` is sent, so no date can match) means the whole body, with 200.
pub fn if_range_holds(if_range: Option<&str>, etag: &str) -> bool {
    if_range.is_none_or(|v| v.trim() == etag)
}

/// Parses a chunk's `Content-Range` into `(start, end)` inclusive. Accepts the spec's
/// `<start>-<end>` and the RFC forms `bytes <start>-<end>/<total>` and `bytes=<start>-<end>`.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let s = header.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split_once('/').map_or(s, |(r, _)| r);
    let (a, b) = s.split_once('-')?;
    let (a, b) = (number(a)?, number(b)?);
    (a <= b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Partial(0..10));
        assert_eq!(parse_range("bytes=90-200", 100), Partial(90..100));
        assert_eq!(parse_range("bytes=10-", 100), Partial(10..100));
        assert_eq!(parse_range("bytes=-10", 100), Partial(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Partial(0..100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=x-1", 100), Full);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), Full);
    }

    #[test]
    fn if_range() {
        let etag = "\"sha256:ab\"";
        assert!(if_range_holds(None, etag));
        assert!(if_range_holds(Some(" \"sha256:ab\" "), etag));
        assert!(!if_range_holds(Some("\"sha256:cd\""), etag));
        assert!(!if_range_holds(Some("W/\"sha256:ab\""), etag));
        assert!(!if_range_holds(Some("Wed, 21 Oct 2015 07:28:00 GMT"), etag));
        assert!(!if_range_holds(Some(""), etag));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-5"), Some((5, 5)));
        for bad in ["", "-", "5-", "-5", "9-1", "a-b", "1-2-3", "+1-2"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
