//! Durations and sizes as people write them in configuration: `500ms`, `90s`, `30m`, `24h`,
//! `7d`; `1048576`, `512KiB`, `32MiB`, `2GiB`. Parsing is total: any text gives a value or an
//! [`InvalidValue`] saying what is wrong, never a panic or an overflow.

use std::fmt;
use std::time::Duration;

/// A value that is not a duration or size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidValue {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.text, self.reason)
    }
}

impl std::error::Error for InvalidValue {}

fn split(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// Parses `500ms`, `90s`, `30m`, `24h`, `7d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let invalid = |reason| InvalidValue {
        text: text.to_owned(),
        reason,
    };
    let (number, unit) = split(text.trim());
    let n: u64 = number
        .parse()
        .map_err(|_| invalid("is not a duration like 90s, 30m, 24h or 7d"))?;
    let scale = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(invalid("has an unknown unit (use ms, s, m, h or d)")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| invalid("is too long"))
}

/// Parses a byte count: `1048576`, `512KiB`, `32MiB`, `2GiB` (`K`, `M`, `G`, `KB`… are taken as
/// binary units too).
pub fn parse_size(text: &str) -> Result<u64, InvalidValue> {
    let invalid = |reason| InvalidValue {
        text: text.to_owned(),
        reason,
    };
    let (number, unit) = split(text.trim());
    let n: u64 = number
        .parse()
        .map_err(|_| invalid("is not a size like 32MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(invalid("has an unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| invalid("is too large"))
}

/// Serde support for optional durations written as text (`with = "registry_core::units::opt_duration"`).
pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes `"5s"` into `Some(5 s)`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604800));
        assert_eq!(parse_duration(" 90 ").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "5x", "s", "-1s", "99999999999999999999d", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration("5x").unwrap_err().to_string(),
            "\"5x\" has an unknown unit (use ms, s, m, h or d)"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("512 k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        for bad in [
            "1TiB",
            "MiB",
            "",
            "99999999999999999999GiB",
            "17179869184GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
