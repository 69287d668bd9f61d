//! An instance's HTTP Basic users in its htpasswd file (bcrypt): checked names, generated or
//! read passwords, whole-file writes (0600).

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::{bail, Context};

use toml_edit::value;

use crate::instance::{set_key, write_private, Instance};

/// The user a htpasswd line is for (not comments or blank lines).
pub(super) fn user_of(line: &str) -> Option<&str> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(u, _)| u)
}

pub(super) fn read_htpasswd(path: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Checks a user name: what htpasswd and Basic authentication can carry.
pub(crate) fn check_user(user: &str) -> anyhow::Result<()> {
    if user.is_empty()
        || user.len() > 128
        || user.contains(':')
        || user.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        bail!(
            "{user:?} is not a user name (no ':', spaces or control characters; at most 128 bytes)"
        );
    }
    Ok(())
}

/// The instance's htpasswd file: the configured one, else `htpasswd` in its directory, which
/// is then configured.
fn htpasswd_of(i: &Instance, configure: bool) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = i.raw()?.auth.htpasswd {
        return Ok(p);
    }
    let path = i.htpasswd_path();
    if configure {
        if !path.exists() {
            write_private(&path, b"")?;
        }
        let mut doc = i.document()?;
        set_key(&mut doc, "auth", "htpasswd", Some(value("htpasswd")));
        i.save(&doc)?;
    }
    Ok(path)
}

/// A bcrypt hash of `password`.
pub(crate) fn hash_password(password: &str) -> anyhow::Result<String> {
    bcrypt::hash(password, bcrypt::DEFAULT_COST).context("cannot hash the password")
}

/// A random password of 24 letters and digits (about 143 bits), safe in URLs and shells.
pub(crate) fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    while out.len() < 24 {
        let mut byte = [0u8; 1];
        getrandom::fill(&mut byte).expect("the system's random source");
        // 248 = 4 * 62: below it, every letter is equally likely.
        if (byte[0] as usize) < 4 * ALPHABET.len() {
            out.push(ALPHABET[byte[0] as usize % ALPHABET.len()] as char);
        }
    }
    out
}

/// The password for `user add` / `passwd`: the first line of stdin with `--password-stdin`,
/// else a generated one (returned so that it can be shown once).
pub(crate) fn password_input(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((generate_password(), true));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("the password read from stdin is empty");
    }
    Ok((password, false))
}

/// Checks that `user` exists (`exists`) or does not (to be added).
pub(crate) fn expect_user(i: &Instance, user: &str, exists: bool) -> anyhow::Result<()> {
    match (users(i)?.iter().any(|u| u == user), exists) {
        (true, false) => bail!(
            "user {user:?} exists in instance {:?}; change the password with `registry user passwd`",
            i.name
        ),
        (false, true) => bail!("no user {user:?} in instance {:?}", i.name),
        _ => Ok(()),
    }
}

/// Adds `user` (or, with `replace`, changes the password of an existing one).
pub(crate) fn set_user(
    i: &Instance,
    user: &str,
    password: &str,
    replace: bool,
) -> anyhow::Result<()> {
    check_user(user)?;
    let path = htpasswd_of(i, false)?;
    expect_user(i, user, replace)?;
    write_user(&path, user, &hash_password(password)?)?;
    htpasswd_of(i, true)?;
    Ok(())
}

/// Writes `user:hash` into the htpasswd file at `path`, replacing the user's line if there is
/// one; other lines (comments, users with other hash formats) are kept as they are.
pub(crate) fn write_user(path: &Path, user: &str, hash: &str) -> anyhow::Result<()> {
    check_user(user)?;
    let mut lines = read_htpasswd(path)?;
    let line = format!("{user}:{hash}");
    match lines.iter().position(|l| user_of(l) == Some(user)) {
        Some(k) => lines[k] = line,
        None => lines.push(line),
    }
    write_lines(path, &lines)
}

/// Removes `user`.
pub(crate) fn remove_user(i: &Instance, user: &str) -> anyhow::Result<()> {
    let path = htpasswd_of(i, false)?;
    let mut lines = read_htpasswd(&path)?;
    let before = lines.len();
    lines.retain(|l| user_of(l) != Some(user));
    if lines.len() == before {
        bail!("no user {user:?} in instance {:?}", i.name);
    }
    write_lines(&path, &lines)
}

/// The instance's users, in file order.
pub(crate) fn users(i: &Instance) -> anyhow::Result<Vec<String>> {
    let path = htpasswd_of(i, false)?;
    Ok(read_htpasswd(&path)?
        .iter()
        .filter_map(|l| user_of(l).map(str::to_owned))
        .collect())
}

fn write_lines(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_private(path, text.as_bytes())
}
