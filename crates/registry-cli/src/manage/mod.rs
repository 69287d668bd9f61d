//! The management commands over instance directories: `instance create|list|show|remove`,
//! `check`, and (in submodules) `reconfigure` and `user add|remove|list|passwd`. Each validates
//! everything before writing and writes whole files (see `instance`), so a refused command
//! changes nothing.

mod certs;
mod reconfigure;
mod reload;
pub(crate) mod tokens;
mod users;

pub(crate) use reconfigure::{reconfigure, reconfigure_keys};
pub(crate) use reload::{reload, restart_needed};
pub(crate) use users::{
    check_user, expect_user, generate_password, hash_password, password_input, remove_user,
    set_user, users, write_user,
};
use users::{read_htpasswd, user_of};

use std::path::Path;

use anyhow::{bail, Context};
use toml_edit::{value, DocumentMut};

use crate::config::{parse_hostname, parse_storage, Settings, StorageLocation};
use crate::instance::{create_private_dir, set_key, Instance};

/// What `instance create` is told.
pub(crate) struct CreateOptions {
    pub hostname: Option<String>,
    pub listen: Option<String>,
    pub storage: Option<String>,
    pub protected: bool,
}

/// Writes a new instance; refuses a name that exists.
pub(crate) fn create(home: &Path, name: &str, o: &CreateOptions) -> anyhow::Result<Instance> {
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
pub(crate) fn remove(home: &Path, name: &str, force: bool) -> anyhow::Result<()> {
    let i = Instance::open(home, name)?;
    let protected = i.settings().map(|s| s.protected).unwrap_or(true);
    if protected && !force {
        bail!("instance {name:?} is protected (instance.protected = true in {}); use --force to remove it anyway", i.config_path().display());
    }
    std::fs::remove_dir_all(&i.dir).with_context(|| format!("cannot remove {}", i.dir.display()))
}

/// One line per instance: name, address, host name, storage.
pub(crate) fn list(home: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    for i in Instance::all(home)? {
        let line = match i.settings() {
            Ok(s) => format!(
                "{}\t{}://{}\t{}\t{}",
                i.name,
                if s.https() { "https" } else { "http" },
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
pub(crate) fn describe(i: &Instance, s: &Settings) -> String {
    let scheme = if s.https() { "https" } else { "http" };
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
    if let Some(c) = certs::describe(s) {
        out += &format!("  tls       {c}\n");
    }
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
        guards.push(match s.guard.token {
            Some(_) => format!("{users} users in {} (they log in for tokens)", h.display()),
            None => format!("HTTP Basic ({users} users in {})", h.display()),
        });
    }
    if let Some(ca) = s.client_ca() {
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
    if let Some(t) = &s.guard.token {
        guards.push(tokens::describe(t));
    }
    if let Some(o) = &s.guard.oidc {
        guards.push(tokens::describe_oidc(o));
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
    for m in &s.mirrors {
        let mut notes = vec![format!("tags rechecked after {:?}", m.revalidate)];
        if m.default {
            notes.push("default mirror: also names without a prefix".into());
        }
        if let Some(c) = &m.credentials {
            notes.push(format!("as {}", c.username));
        }
        out += &format!(
            "  mirror    {}/ -> {} ({})\n",
            m.prefix,
            m.url,
            notes.join(", ")
        );
    }
    out += &format!("  protected {}\n", if s.protected { "yes" } else { "no" });
    out
}

/// Validates every instance and how they share addresses; returns the report.
pub(crate) fn check(home: &Path) -> anyhow::Result<String> {
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
        tokens::check(&s).with_context(|| format!("{}", i.config_path().display()))?;
        out += &describe(i, &s);
        settings.push((i.name.clone(), s));
    }
    check_addresses(&settings)?;
    Ok(out)
}

/// Instances sharing an address must all use TLS or none, and differ by host name.
pub(crate) fn check_addresses(instances: &[(String, Settings)]) -> anyhow::Result<()> {
    let mut by_address: std::collections::BTreeMap<_, Vec<_>> = Default::default();
    for (name, s) in instances {
        by_address
            .entry(s.listen)
            .or_default()
            .push((name, s.hostname.clone(), s.https()));
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

/// Makes sure the config home exists (0700).
pub(crate) fn ensure_home(home: &Path) -> anyhow::Result<()> {
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
