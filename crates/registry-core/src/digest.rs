//! Content digests (`sha256` required, `sha512` accepted) and a streaming hasher whose state can
//! be saved and restored, so an upload spread over many requests (or nodes) is hashed once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256, Sha512};

use crate::error::Error;
use crate::names::truncate;

/// A digest algorithm the registry can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// SHA-256, the algorithm every client uses.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest string.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other => Err(Error::DigestInvalid(format!(
                "unsupported digest algorithm {:?}",
                truncate(other)
            ))),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated digest such as `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }
    /// Digest of a byte slice (for small things such as manifests).
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(Error::DigestInvalid(format!(
                "malformed digest {:?}",
                truncate(s)
            )));
        };
        let algorithm: Algorithm = alg.parse()?;
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if !ok {
            return Err(Error::DigestInvalid(format!(
                "malformed digest {:?}",
                truncate(s)
            )));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.algorithm.as_str())?;
        f.write_str(":")?;
        f.write_str(&self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An incremental hasher for one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// The hasher's internal state as hex, to be stored between requests.
    pub fn save(&self) -> SavedHasher {
        let state = match self {
            Hasher::Sha256(h) => hex::encode(h.serialize()),
            Hasher::Sha512(h) => hex::encode(h.serialize()),
        };
        SavedHasher {
            algorithm: self.algorithm(),
            state,
        }
    }

    /// Restores a state produced by [`Hasher::save`]; `None` when it is corrupt.
    pub fn restore(saved: &SavedHasher) -> Option<Self> {
        let bytes = hex::decode(&saved.state).ok()?;
        match saved.algorithm {
            Algorithm::Sha256 => {
                let s = SerializedState::<Sha256>::try_from(&bytes[..]).ok()?;
                Sha256::deserialize(&s).ok().map(Hasher::Sha256)
            }
            Algorithm::Sha512 => {
                let s = SerializedState::<Sha512>::try_from(&bytes[..]).ok()?;
                Sha512::deserialize(&s).ok().map(Hasher::Sha512)
            }
        }
    }
}

/// The serialized state of a [`Hasher`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHasher {
    /// Which algorithm the state belongs to.
    pub algorithm: Algorithm,
    /// The hex-encoded internal state (chaining value, length and buffered tail).
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        let long = format!("sha512:{}", "0".repeat(128));
        assert!(long.parse::<Digest>().is_ok());
        for bad in [
            "sha256:",
            "sha256",
            ":abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            &EMPTY.to_uppercase(),
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha512:{}", "0".repeat(64)),
            &format!("sha384:{}", "0".repeat(96)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes() {
        assert_eq!(Digest::of(Algorithm::Sha256, b"").to_string(), EMPTY);
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert!(d.hex().starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn saved_state_resumes() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
            let mut h = Hasher::new(alg);
            h.update(&data[..3333]);
            let saved = h.save();
            let json = serde_json::to_string(&saved).unwrap();
            let mut resumed = Hasher::restore(&serde_json::from_str(&json).unwrap()).unwrap();
            resumed.update(&data[3333..]);
            assert_eq!(resumed.finish(), Digest::of(alg, &data));
        }
        let bad = SavedHasher {
            algorithm: Algorithm::Sha256,
            state: "zz".into(),
        };
        assert!(Hasher::restore(&bad).is_none());
    }
}
