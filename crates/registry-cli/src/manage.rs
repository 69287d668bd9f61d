//! The management commands over instance directories: `instance create|list|show|remove`,
//! `user add|remove|list|passwd` and `check`. Each validates everything before writing and
//! writes whole files (see `instance`), so a refused command changes nothing.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::{bail, Context};
use toml_edit::{value, DocumentMut};

use crate::config::{parse_hostname, parse_storage, Settings, StorageLocation};
use crate::instance::{create_private_dir, set_key, write_private, Instance};

/// What `instance create` is told.
pub struct CreateOptions {
    pub hostname: Option<String>,
    pub listen: Option<String>,
    pub storage: Option<String>,
    pub protected: bool,
}

/// Writes a new instance; refuses a name that exists.
pub fn create(home: &Path, name: &str, o: &CreateOptions) -> anyhow::Result<Instance> {
    let i = Instance::at(home, name)?;
    if i.dir.exists() {
        bail!(
            "instance {name:?} exists already ({}); change it with `registry reconfigure --instance {name}` or remove it first",
            i.dir.display()
        );
    }
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix(format!(
        "# Registry instance {name:?}: see `registry check` and `registry reconfigure --help`.\n"
    ));
    let hostname = o.hostname.as_deref().map(parse_hostname).transpose()?;
    set_key(&mut doc, "instance", "hostname", hostname.map(value));
    set_key(&mut doc, "instance", "protected", Some(value(o.protected)));
    let listen = o.listen.as_deref().unwrap_or("127.0.0.1:5000");
    set_key(&mut doc, "server", "listen", Some(value(listen)));
    // Relative paths are relative to the instance directory.
    let url = o.storage.as_deref().unwrap_or("data");
    parse_storage(url)?;
    set_key(&mut doc, "storage", "url", Some(value(url)));
    // `save` validates before it writes; a refused instance leaves no directory behind.
    create_private_dir(&i.dir)?;
    if let Err(e) = i.save(&doc) {
        let _ = std::fs::remove_dir_all(&i.dir);
        return Err(e);
    }
    Ok(i)
}

/// Removes an instance's directory (its config, users and certificates; never its stored
/// images). Refuses a protected instance unless `force`.
pub fn remove(home: &Path, name: &str, force: bool) -> anyhow::Result<()> {
    let i = Instance::open(home, name)?;
    let protected = i.settings().map(|s| s.protected).unwrap_or(true);
    if protected && !force {
        bail!("instance {name:?} is protected (instance.protected = true in {}); use --force to remove it anyway", i.config_path().display());
    }
    std::fs::remove_dir_all(&i.dir).with_context(|| format!("cannot remove {}", i.dir.display()))
}

/// One line per instance: name, address, host name, storage.
pub fn list(home: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    for i in Instance::all(home)? {
        let line = match i.settings() {
            Ok(s) => format!(
                "{}\t{}://{}\t{}\t{}",
                i.name,
                if s.tls.is_some() { "https" } else { "http" },
                s.listen,
                s.hostname.as_deref().unwrap_or("*"),
                describe_storage(&s.storage)
            ),
            Err(e) => format!("{}\tinvalid: {e:#}", i.name),
        };
        out.push_str(&line);
        out.push('\n');
    }
    if out.is_empty() {
        out = format!(
            "no instances in {} (create one with `registry config`)\n",
            home.display()
        );
    }
    Ok(out)
}

fn describe_storage(s: &StorageLocation) -> String {
    match s {
        StorageLocation::Filesystem(p) => format!("filesystem {}", p.display()),
        StorageLocation::Memory => "memory (lost on exit)".to_owned(),
        StorageLocation::S3(loc) => format!(
            "s3://{}/{} at {}",
            loc.bucket,
            loc.prefix,
            loc.endpoint
                .as_deref()
                .unwrap_or("the AWS_ENDPOINT_URL / AWS default")
        ),
    }
}

/// What an instance serves, for `instance show` and `check`; never a secret.
pub fn describe(i: &Instance, s: &Settings) -> String {
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    let mut out = format!("{} ({})\n", i.name, i.config_path().display());
    out += &format!(
        "  listen    {scheme}://{}{}\n",
        s.listen,
        s.plain_listen
            .map(|p| format!(" and http://{p}"))
            .unwrap_or_default()
    );
    out += &format!(
        "  host      {}\n",
        s.hostname
            .as_deref()
            .unwrap_or("any (no instance.hostname)")
    );
    out += &format!("  storage   {}\n", describe_storage(&s.storage));
    let mut guards = Vec::new();
    if let Some(h) = &s.guard.htpasswd {
        let users = read_htpasswd(h)
            .map(|l| {
                l.iter()
                    .filter(|l| user_of(l).is_some())
                    .count()
                    .to_string()
            })
            .unwrap_or_else(|_| "unreadable".into());
        guards.push(format!("HTTP Basic ({users} users in {})", h.display()));
    }
    if let Some(ca) = s.tls.as_ref().and_then(|t| t.client_ca.as_ref()) {
        let names = match &s.guard.client_names {
            Some(n) => n
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            None => "any name".into(),
        };
        guards.push(format!("mutual TLS (CA {}, names: {names})", ca.display()));
    }
    if !s.guard.allow.is_everything() {
        guards.push(format!("IP allowlist {}", s.guard.allow));
    }
    if s.guard.public_read {
        guards.push("anonymous pull".into());
    }
    if !s.guard.rules.is_empty() {
        guards.push(format!("{} access rules", s.guard.rules.len()));
    }
    if guards.is_empty() {
        guards.push("none: anyone who can connect may push and pull".into());
    }
    out += &format!("  guards    {}\n", guards.join("; "));
    out += &format!("  protected {}\n", if s.protected { "yes" } else { "no" });
    out
}

/// Validates every instance and how they share addresses; returns the report.
pub fn check(home: &Path) -> anyhow::Result<String> {
    let all = Instance::all(home)?;
    if all.is_empty() {
        bail!(
            "no instances in {} (create one with `registry config`)",
            home.display()
        );
    }
    let mut out = String::new();
    let mut settings = Vec::new();
    for i in &all {
        let s = i.settings()?;
        if let Some(tls) = &s.tls {
            for f in [&tls.cert, &tls.key]
                .into_iter()
                .chain(tls.client_ca.iter())
            {
                if !f.is_file() {
                    bail!(
                        "{}: TLS file {} does not exist",
                        i.config_path().display(),
                        f.display()
                    );
                }
            }
        }
        if let Some(h) = &s.guard.htpasswd {
            read_htpasswd(h).with_context(|| format!("{}", i.config_path().display()))?;
        }
        out += &describe(i, &s);
        settings.push((i.name.clone(), s));
    }
    check_addresses(&settings)?;
    Ok(out)
}

/// Instances sharing an address must all use TLS or none, and differ by host name.
pub fn check_addresses(instances: &[(String, Settings)]) -> anyhow::Result<()> {
    let mut by_address: std::collections::BTreeMap<_, Vec<_>> = Default::default();
    for (name, s) in instances {
        by_address
            .entry(s.listen)
            .or_default()
            .push((name, s.hostname.clone(), s.tls.is_some()));
        if let Some(p) = s.plain_listen {
            by_address
                .entry(p)
                .or_default()
                .push((name, s.hostname.clone(), false));
        }
    }
    for (addr, sites) in by_address {
        if sites.iter().any(|s| s.2) && sites.iter().any(|s| !s.2) {
            bail!("on {addr}: instances using TLS and plain HTTP cannot share one address");
        }
        for (k, a) in sites.iter().enumerate() {
            if let Some(b) = sites[..k].iter().find(|b| b.1 == a.1) {
                bail!(
                    "on {addr}: instances {} and {} both serve {}: give each its own instance.hostname",
                    b.0,
                    a.0,
                    a.1.as_deref().map_or("every host name".to_owned(), |h| format!("{h:?}"))
                );
            }
        }
    }
    Ok(())
}

// ---- reconfigure -------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
    List,
}

/// The keys `reconfigure` knows: name, TOML table, TOML key, kind, what it is.
const KEYS: &[(&str, &str, &str, Kind, &str)] = &[
    (
        "hostname",
        "instance",
        "hostname",
        Kind::Text,
        "the host name clients use",
    ),
    (
        "protected",
        "instance",
        "protected",
        Kind::Bool,
        "refuse remove/uninstall without --force",
    ),
    (
        "listen",
        "server",
        "listen",
        Kind::Text,
        "IP:PORT to listen on",
    ),
    (
        "storage",
        "storage",
        "url",
        Kind::Text,
        "a directory or s3://bucket/prefix",
    ),
    (
        "s3_endpoint",
        "storage.s3",
        "endpoint",
        Kind::Text,
        "S3 endpoint URL",
    ),
    (
        "s3_region",
        "storage.s3",
        "region",
        Kind::Text,
        "S3 region (auto for R2)",
    ),
    (
        "s3_access_key_id",
        "storage.s3",
        "access_key_id",
        Kind::Text,
        "S3 access key id",
    ),
    (
        "s3_secret_access_key",
        "storage.s3",
        "secret_access_key",
        Kind::Text,
        "S3 secret key",
    ),
    (
        "s3_allow_http",
        "storage.s3",
        "allow_http",
        Kind::Bool,
        "plain HTTP to a remote S3",
    ),
    (
        "s3_virtual_hosted",
        "storage.s3",
        "virtual_hosted",
        Kind::Bool,
        "bucket.endpoint addressing",
    ),
    (
        "s3_redirect",
        "storage.s3",
        "redirect",
        Kind::Bool,
        "blob GETs redirect to S3",
    ),
    ("delete", "api", "delete", Kind::Bool, "allow DELETE"),
    (
        "upload_max_age",
        "uploads",
        "max_age",
        Kind::Text,
        "purge idle uploads after (24h)",
    ),
    (
        "metrics",
        "metrics",
        "enabled",
        Kind::Bool,
        "Prometheus metrics at /metrics",
    ),
    (
        "tls_cert",
        "tls",
        "cert",
        Kind::Text,
        "PEM certificate chain",
    ),
    ("tls_key", "tls", "key", Kind::Text, "PEM private key"),
    (
        "client_ca",
        "tls",
        "client_ca",
        Kind::Text,
        "CA of client certificates (mTLS)",
    ),
    (
        "client_auth",
        "tls",
        "client_auth",
        Kind::Text,
        "required or optional",
    ),
    (
        "client_names",
        "tls",
        "client_names",
        Kind::List,
        "authorized client names, * = one label",
    ),
    (
        "plain_listen",
        "tls",
        "plain_listen",
        Kind::Text,
        "also plain HTTP on IP:PORT",
    ),
    (
        "htpasswd",
        "auth",
        "htpasswd",
        Kind::Text,
        "htpasswd file of Basic users",
    ),
    ("realm", "auth", "realm", Kind::Text, "Basic realm"),
    (
        "public_read",
        "auth",
        "public_read",
        Kind::Bool,
        "anonymous pull",
    ),
    (
        "ip_allowlist",
        "network",
        "allow",
        Kind::List,
        "CIDRs that may connect",
    ),
    (
        "trusted_proxies",
        "network",
        "trusted_proxies",
        Kind::List,
        "proxies whose X-Forwarded-For counts",
    ),
];

/// The valid keys, for messages and `--help`.
pub fn reconfigure_keys() -> String {
    KEYS.iter()
        .map(|(k, _, _, _, what)| format!("  {k:<22} {what}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse_bool(key: &str, v: &str) -> anyhow::Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => bail!("{key}={v:?}: expected true or false"),
    }
}

/// Applies `KEY=VALUE` settings to an instance's registry.toml (comments kept); an empty
/// value removes the setting (its default applies). The result is validated as a whole before
/// it is written: a bad value changes nothing.
pub fn reconfigure(i: &Instance, settings: &[String]) -> anyhow::Result<()> {
    if settings.is_empty() {
        bail!(
            "name at least one KEY=VALUE; valid keys:\n{}",
            reconfigure_keys()
        );
    }
    let mut doc = i.document()?;
    for setting in settings {
        let Some((key, v)) = setting.split_once('=') else {
            bail!("{setting:?} is not KEY=VALUE");
        };
        let Some(&(_, table, name, kind, _)) = KEYS.iter().find(|k| k.0 == key) else {
            let names: Vec<_> = KEYS.iter().map(|k| k.0).collect();
            bail!("unknown key {key:?}; valid keys: {}", names.join(", "));
        };
        let item = match kind {
            _ if v.is_empty() => None,
            Kind::Text if key == "hostname" => Some(value(parse_hostname(v)?)),
            Kind::Text => Some(value(v)),
            Kind::Bool => Some(value(parse_bool(key, v)?)),
            Kind::List => {
                let items: toml_edit::Array = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                Some(value(items))
            }
        };
        set_key(&mut doc, table, name, item);
    }
    i.save(&doc)
}

// ---- users -------------------------------------------------------------------------------

/// The user a htpasswd line is for (not comments or blank lines).
fn user_of(line: &str) -> Option<&str> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(u, _)| u)
}

fn read_htpasswd(path: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Checks a user name: what htpasswd and Basic authentication can carry.
pub fn check_user(user: &str) -> anyhow::Result<()> {
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
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    bcrypt::hash(password, bcrypt::DEFAULT_COST).context("cannot hash the password")
}

/// A random password of 24 letters and digits (about 143 bits), safe in URLs and shells.
pub fn generate_password() -> String {
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
pub fn password_input(from_stdin: bool) -> anyhow::Result<(String, bool)> {
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
pub fn expect_user(i: &Instance, user: &str, exists: bool) -> anyhow::Result<()> {
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
pub fn set_user(i: &Instance, user: &str, password: &str, replace: bool) -> anyhow::Result<()> {
    check_user(user)?;
    let path = htpasswd_of(i, false)?;
    expect_user(i, user, replace)?;
    write_user(&path, user, &hash_password(password)?)?;
    htpasswd_of(i, true)?;
    Ok(())
}

/// Writes `user:hash` into the htpasswd file at `path`, replacing the user's line if there is
/// one; other lines (comments, users with other hash formats) are kept as they are.
pub fn write_user(path: &Path, user: &str, hash: &str) -> anyhow::Result<()> {
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
pub fn remove_user(i: &Instance, user: &str) -> anyhow::Result<()> {
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
pub fn users(i: &Instance) -> anyhow::Result<Vec<String>> {
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

/// Makes sure the config home exists (0700).
pub fn ensure_home(home: &Path) -> anyhow::Result<()> {
    create_private_dir(home).with_context(|| {
        format!(
            "cannot use config directory {} (set --config-dir or REGISTRY_CONFIG_DIR)",
            home.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CreateOptions {
        CreateOptions {
            hostname: Some("reg.example.com".into()),
            listen: None,
            storage: None,
            protected: false,
        }
    }

    #[test]
    fn instances_and_users() {
        let home = tempfile::tempdir().unwrap();
        let i = create(home.path(), "team-a", &options()).unwrap();
        assert!(
            create(home.path(), "team-a", &options()).is_err(),
            "duplicate"
        );
        let bad = CreateOptions {
            hostname: Some("bad_host".into()),
            ..options()
        };
        assert!(create(home.path(), "other", &bad).is_err());
        assert!(
            !home.path().join("instances/other").exists(),
            "nothing written"
        );
        let s = i.settings().unwrap();
        assert_eq!(s.hostname.as_deref(), Some("reg.example.com"));
        assert_eq!(s.storage, StorageLocation::Filesystem(i.dir.join("data")));
        set_user(&i, "ann", "secret-1", false).unwrap();
        set_user(&i, "bob", "secret-2", false).unwrap();
        assert!(set_user(&i, "ann", "x", false).is_err());
        assert!(set_user(&i, "a:b", "x", false).is_err());
        assert_eq!(users(&i).unwrap(), ["ann", "bob"]);
        set_user(&i, "ann", "secret-3", true).unwrap();
        remove_user(&i, "bob").unwrap();
        assert!(remove_user(&i, "bob").is_err());
        let s = i.settings().unwrap();
        assert_eq!(
            s.guard.htpasswd.as_deref(),
            Some(i.htpasswd_path().as_path())
        );
        let text = std::fs::read_to_string(i.htpasswd_path()).unwrap();
        let hash = text.trim().strip_prefix("ann:").unwrap();
        assert!(bcrypt::verify("secret-3", hash).unwrap());
        assert!(check(home.path()).unwrap().contains("HTTP Basic (1 users"));
        assert!(!check(home.path()).unwrap().contains("secret"));
        let listed = list(home.path()).unwrap();
        assert!(
            listed.starts_with("team-a\thttp://127.0.0.1:5000\treg.example.com"),
            "{listed}"
        );
        remove(home.path(), "team-a", false).unwrap();
        assert!(Instance::all(home.path()).unwrap().is_empty());
    }

    #[test]
    fn protected_and_shared_addresses() {
        let home = tempfile::tempdir().unwrap();
        let o = CreateOptions {
            protected: true,
            ..options()
        };
        create(home.path(), "keep", &o).unwrap();
        assert!(remove(home.path(), "keep", false).is_err());
        let same = CreateOptions {
            hostname: Some("reg.example.com".into()),
            ..options()
        };
        create(home.path(), "clash", &same).unwrap();
        let err = check(home.path()).unwrap_err().to_string();
        assert!(err.contains("both serve"), "{err}");
        remove(home.path(), "keep", true).unwrap();
        check(home.path()).unwrap();
    }

    #[test]
    fn generated_passwords() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }
}
