//! htpasswd files: every hash format Apache's `htpasswd` writes (bcrypt `$2y$`/`$2b$`/`$2a$`,
//! MD5 `$apr1$`, SHA1 `{SHA}`) plus SHA-256/512-crypt (`$5$`, `$6$`), parsed line by line (a bad
//! line is reported with its number and skipped) and verified in constant time.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use md5::{Digest as _, Md5};
use subtle::ConstantTimeEq;

use crate::Error;

/// One stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// bcrypt, `$2y$`, `$2b$` or `$2a$`.
    Bcrypt(String),
    /// MD5-crypt: Apache's `$apr1$` or the BSD `$1$`.
    Md5Crypt {
        /// `apr1` or `1`.
        magic: &'static str,
        /// At most 8 characters.
        salt: String,
        /// The 22-character encoded digest.
        hash: String,
    },
    /// `{SHA}` + base64 of the SHA-1 of the password (unsalted; Apache still writes it).
    Sha1([u8; 20]),
    /// SHA-256-crypt (`$5$`) or SHA-512-crypt (`$6$`).
    ShaCrypt(String),
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are secrets too: never printed.
        f.write_str(match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Md5Crypt { .. } => "md5-crypt",
            PasswordHash::Sha1(_) => "sha1",
            PasswordHash::ShaCrypt(_) => "sha-crypt",
        })
    }
}

impl PasswordHash {
    /// Parses the hash part of an htpasswd line.
    pub fn parse(s: &str) -> Result<PasswordHash, Error> {
        if s.starts_with("$2y$") || s.starts_with("$2b$") || s.starts_with("$2a$") {
            s.parse::<bcrypt::HashParts>()
                .map_err(|e| Error::Hash(format!("invalid bcrypt hash: {e}")))?;
            return Ok(PasswordHash::Bcrypt(s.to_owned()));
        }
        for magic in ["apr1", "1"] {
            if let Some(rest) = s.strip_prefix('$').and_then(|r| r.strip_prefix(magic)) {
                let Some(rest) = rest.strip_prefix('$') else {
                    continue;
                };
                let (salt, hash) = rest
                    .split_once('$')
                    .ok_or_else(|| Error::Hash("an MD5-crypt hash needs $salt$hash".into()))?;
                if salt.len() > 8 || hash.len() != 22 || !hash.bytes().all(is_crypt64) {
                    return Err(Error::Hash("malformed MD5-crypt hash".into()));
                }
                return Ok(PasswordHash::Md5Crypt {
                    magic,
                    salt: salt.to_owned(),
                    hash: hash.to_owned(),
                });
            }
        }
        if let Some(b64) = s.strip_prefix("{SHA}") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| Error::Hash("the {SHA} hash is not base64".into()))?;
            let digest: [u8; 20] = bytes
                .try_into()
                .map_err(|_| Error::Hash("the {SHA} hash is not 20 bytes".into()))?;
            return Ok(PasswordHash::Sha1(digest));
        }
        if s.starts_with("$5$") || s.starts_with("$6$") {
            sha_crypt::PasswordHashRef::new(s)
                .map_err(|e| Error::Hash(format!("invalid SHA-crypt hash: {e}")))?;
            return Ok(PasswordHash::ShaCrypt(s.to_owned()));
        }
        if s.len() == 13 && s.bytes().all(is_crypt64) {
            return Err(Error::Hash(
                "DES crypt hashes are not supported (insecure); use bcrypt".into(),
            ));
        }
        Err(Error::Hash(
            "unknown hash format (supported: bcrypt, $apr1$, $1$, {SHA}, $5$, $6$)".into(),
        ))
    }

    /// Whether verifying costs milliseconds (and belongs off the async runtime).
    pub fn is_expensive(&self) -> bool {
        matches!(self, PasswordHash::Bcrypt(_) | PasswordHash::ShaCrypt(_))
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Md5Crypt { magic, salt, hash } => {
                let computed = md5_crypt(password, salt.as_bytes(), magic);
                computed.as_bytes().ct_eq(hash.as_bytes()).into()
            }
            PasswordHash::Sha1(expected) => {
                let computed = sha1::Sha1::digest(password);
                computed.as_slice().ct_eq(expected).into()
            }
            PasswordHash::ShaCrypt(h) => {
                use sha_crypt::password_hash::PasswordVerifier;
                match sha_crypt::PasswordHashRef::new(h) {
                    Ok(parsed) => sha_crypt::ShaCrypt::default()
                        .verify_password(password, parsed)
                        .is_ok(),
                    Err(_) => false,
                }
            }
        }
    }
}

fn is_crypt64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

const CRYPT64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// MD5-crypt (Poul-Henning Kamp's algorithm; Apache's `$apr1$` differs only in its magic).
/// Returns the 22-character encoded digest.
pub fn md5_crypt(password: &[u8], salt: &[u8], magic: &str) -> String {
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(b"$");
    ctx.update(magic.as_bytes());
    ctx.update(b"$");
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin: [u8; 16] = ctx.finalize().into();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize().into();
    }
    let mut out = String::with_capacity(22);
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(CRYPT64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    put(f(11), 2);
    out
}

/// A line of an htpasswd file that was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// Why (never the line's content, which holds a hash).
    pub reason: String,
}

/// The users of an htpasswd file.
#[derive(Clone, Debug, Default)]
pub struct Htpasswd {
    users: HashMap<String, PasswordHash>,
    /// Some user's hash: unknown users are verified against it, so that they take as long.
    decoy: Option<PasswordHash>,
}

impl Htpasswd {
    /// Parses a file's text. Blank lines and `#` comments are ignored; a malformed line or a
    /// repeated user is reported and skipped (the first entry of a user wins, as in Apache).
    pub fn parse(text: &str) -> (Htpasswd, Vec<LineError>) {
        let mut file = Htpasswd::default();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let mut fail = |reason: String| {
                errors.push(LineError {
                    line: i + 1,
                    reason,
                })
            };
            let Some((user, hash)) = line.split_once(':') else {
                fail("not user:hash".into());
                continue;
            };
            if user.is_empty() {
                fail("empty user name".into());
                continue;
            }
            let hash = match PasswordHash::parse(hash.trim()) {
                Ok(h) => h,
                Err(e) => {
                    fail(e.to_string());
                    continue;
                }
            };
            if file.users.contains_key(user) {
                fail(format!(
                    "user {user:?} appears again; the first entry is used"
                ));
                continue;
            }
            if file.decoy.is_none() || hash.is_expensive() {
                file.decoy = Some(hash.clone());
            }
            file.users.insert(user.to_owned(), hash);
        }
        (file, errors)
    }

    /// The hash of a user.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// A hash to verify unknown users against, so that they cost as much as known ones.
    pub fn decoy(&self) -> Option<&PasswordHash> {
        self.decoy.as_ref()
    }

    /// How many users the file has.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors written by `openssl passwd` and Apache's htpasswd.
    const APR1: &str = "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/";
    const SHA1: &str = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";

    #[test]
    fn apr1_and_md5_crypt() {
        let h = PasswordHash::parse(APR1).unwrap();
        assert!(h.verify(b"password"));
        assert!(!h.verify(b"passwore"));
        assert!(!h.verify(b""));
        // openssl passwd -1 / -apr1
        let h = PasswordHash::parse("$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/").unwrap();
        assert!(h.verify(b"password"));
        let h = PasswordHash::parse("$apr1$xy$43..WIhbfuznGvwoCyUek/").unwrap();
        assert!(h.verify(b""));
        let h = PasswordHash::parse("$apr1$abcdefgh$3VtmMyaDgcjg1kZsVFO32.").unwrap();
        assert!(h.verify(b"a-very-long-password-exceeding-sixteen-bytes"));
        assert!(!h.is_expensive());
    }

    #[test]
    fn sha1() {
        let h = PasswordHash::parse(SHA1).unwrap();
        assert!(h.verify(b"password"));
        assert!(!h.verify(b"Password"));
    }

    #[test]
    fn bcrypt_variants() {
        let hash = bcrypt::hash_with_result("s3cret", 4).unwrap();
        for v in [
            bcrypt::Version::TwoY,
            bcrypt::Version::TwoB,
            bcrypt::Version::TwoA,
        ] {
            let h = PasswordHash::parse(&hash.format_for_version(v)).unwrap();
            assert!(h.verify(b"s3cret"));
            assert!(!h.verify(b"s3cre"));
            assert!(h.is_expensive());
        }
        assert!(PasswordHash::parse("$2y$04$short").is_err());
    }

    #[test]
    fn sha_crypt() {
        // The reference vectors of Ulrich Drepper's specification.
        let h = PasswordHash::parse("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5")
            .unwrap();
        assert!(h.verify(b"Hello world!"));
        assert!(!h.verify(b"Hello world"));
        let h = PasswordHash::parse("$6$rounds=10000$saltstringsaltstring$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.").unwrap();
        assert!(h.verify(b"Hello world!"));
        assert!(!h.verify(b"hello world!"));
    }

    #[test]
    fn file_with_bad_lines() {
        let text = format!(
            "# users\nann:{APR1}\n\nbob:{SHA1}\r\nbroken line\n:{SHA1}\ncid:plaintext\nann:{SHA1}\ndes:abJnggxhB/yWI\n"
        );
        let (file, errors) = Htpasswd::parse(&text);
        assert_eq!(file.len(), 2);
        assert!(file.get("ann").unwrap().verify(b"password"));
        assert!(file.get("bob").unwrap().verify(b"password"));
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![5, 6, 7, 8, 9]);
        for e in &errors {
            assert!(!e.reason.contains("W6ph5"), "no hash in {e:?}");
        }
        assert!(file.decoy().is_some());
    }

    #[test]
    fn hashes_are_not_printed() {
        let h = PasswordHash::parse(SHA1).unwrap();
        assert_eq!(format!("{h:?}"), "sha1");
    }
}
