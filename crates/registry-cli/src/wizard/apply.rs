//! Writing what the wizard gathered: the instance's registry.toml (validated before anything
//! is written), its certificates and users, and the optional password export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use toml_edit::{value, Array, DocumentMut, Item};

use super::{Answers, AuthAnswer, MirrorAnswer, TlsAnswer, DOCKER_HUB};
use crate::config::RawConfig;
use crate::instance::{create_private_dir, set_key, write_private, Instance};
use crate::{cert, manage};

/// `user:pass` percent-encoded for a URL's userinfo.
fn url_userinfo(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Writes the mirrors the wizard was given. A Docker Hub mirror is the default mirror (Docker's
/// registry-mirrors and containerd's mirrors ask it for `library/…`) unless another one is.
fn set_mirrors(doc: &mut DocumentMut, answer: &MirrorAnswer) {
    use crate::config::mirrors::{mirror_entry, remove_mirror};
    let wanted: Vec<(String, String)> = match answer {
        MirrorAnswer::Set(list) => {
            let prefixes: Vec<String> = doc
                .get("proxy")
                .and_then(|p| p.as_array_of_tables())
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|t| t.get("prefix")?.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for p in prefixes {
                if !list.iter().any(|(w, _)| *w == p) {
                    remove_mirror(doc, &p);
                }
            }
            list.clone()
        }
        MirrorAnswer::DockerHub(false) => {
            remove_mirror(doc, DOCKER_HUB.0);
            Vec::new()
        }
        MirrorAnswer::DockerHub(true) => {
            if mirror_entry(doc, DOCKER_HUB.0, false).is_some() {
                return;
            }
            vec![(DOCKER_HUB.0.to_owned(), DOCKER_HUB.1.to_owned())]
        }
    };
    for (prefix, url) in wanted {
        let has_default = doc
            .get("proxy")
            .and_then(|p| p.as_array_of_tables())
            .is_some_and(|entries| {
                entries.iter().any(|t| {
                    t.get("default").and_then(|d| d.as_bool()) == Some(true)
                        && t.get("prefix").and_then(|p| p.as_str()) != Some(prefix.as_str())
                })
            });
        if let Some(entry) = mirror_entry(doc, &prefix, true) {
            entry["url"] = value(url);
            if prefix == DOCKER_HUB.0 && !has_default && !entry.contains_key("default") {
                entry["default"] = value(true);
            }
        }
    }
}

/// Writes the instance: validates the new registry.toml first, then certificates, users, the
/// password export, and the registry.toml last. Returns what to tell the person.
pub(crate) fn apply(home: &Path, i: &Instance, answers: &Answers) -> anyhow::Result<String> {
    let existed = i.config_path().exists();
    let mut doc = if existed {
        i.document()?
    } else {
        let mut d = DocumentMut::new();
        d.decor_mut().set_prefix(format!(
            "# Registry instance {:?}, written by `registry config`; see `registry check`.\n",
            i.name
        ));
        d
    };
    let a = answers;
    let old_domain = doc
        .get("instance")
        .and_then(|t| t.get("hostname"))
        .and_then(|h| h.as_str())
        .map(str::to_owned);
    set_key(&mut doc, "instance", "hostname", Some(value(&a.domain)));
    if !existed {
        set_key(&mut doc, "instance", "protected", Some(value(false)));
    }
    set_key(&mut doc, "server", "listen", Some(value(&a.listen)));
    set_key(&mut doc, "storage", "url", Some(value(&a.storage)));
    match &a.s3 {
        Some(s3) => {
            let opt = |v: &Option<String>| v.as_ref().map(value);
            set_key(&mut doc, "storage.s3", "endpoint", opt(&s3.endpoint));
            set_key(&mut doc, "storage.s3", "region", opt(&s3.region));
            set_key(
                &mut doc,
                "storage.s3",
                "access_key_id",
                opt(&s3.access_key_id),
            );
            set_key(
                &mut doc,
                "storage.s3",
                "secret_access_key",
                opt(&s3.secret_access_key),
            );
        }
        None => {
            if let Some(storage) = doc.get_mut("storage").and_then(Item::as_table_mut) {
                storage.remove("s3");
            }
        }
    }
    let (cert_path, key_path) = match &a.tls {
        TlsAnswer::None | TlsAnswer::Acme { .. } => (None, None),
        TlsAnswer::OwnCa => (
            Some("tls/server.pem".to_owned()),
            Some("tls/server-key.pem".to_owned()),
        ),
        TlsAnswer::Files { cert, key } => (
            Some(cert.display().to_string()),
            Some(key.display().to_string()),
        ),
    };
    set_key(&mut doc, "tls", "cert", cert_path.map(value));
    set_key(&mut doc, "tls", "key", key_path.map(value));
    match &a.tls {
        TlsAnswer::Acme {
            email,
            directory,
            directory_ca,
            http01,
        } => {
            let text = |v: &Option<String>| v.as_deref().map(value);
            set_key(&mut doc, "tls.acme", "email", text(email));
            set_key(&mut doc, "tls.acme", "directory", text(directory));
            let ca = directory_ca.as_ref().map(|p| p.display().to_string());
            set_key(&mut doc, "tls.acme", "directory_ca", text(&ca));
            let challenge = http01.then(|| value("http-01"));
            set_key(&mut doc, "tls.acme", "challenge", challenge);
            let plain = doc.get("tls").and_then(|t| t.get("plain_listen")).is_some();
            if *http01 && !plain {
                set_key(&mut doc, "tls", "plain_listen", Some(value("0.0.0.0:80")));
            }
        }
        _ => {
            if let Some(tls) = doc.get_mut("tls").and_then(Item::as_table_mut) {
                tls.remove("acme");
            }
        }
    }
    let own_ca = cert::ca_paths(Path::new("")).0.display().to_string();
    match &a.auth {
        AuthAnswer::None => {
            set_key(&mut doc, "auth", "htpasswd", None);
            set_key(&mut doc, "tls", "client_ca", None);
            set_key(&mut doc, "tls", "client_names", None);
        }
        AuthAnswer::Basic(_) => {
            set_key(&mut doc, "auth", "htpasswd", Some(value("htpasswd")));
            set_key(&mut doc, "tls", "client_ca", None);
            set_key(&mut doc, "tls", "client_names", None);
        }
        AuthAnswer::OAuth2 { users, .. } => {
            if !users.is_empty() || i.htpasswd_path().exists() {
                set_key(&mut doc, "auth", "htpasswd", Some(value("htpasswd")));
            }
            set_key(&mut doc, "tls", "client_ca", None);
            set_key(&mut doc, "tls", "client_names", None);
        }
        AuthAnswer::Mtls { ca, names } => {
            set_key(&mut doc, "auth", "htpasswd", None);
            let ca = ca
                .as_ref()
                .map_or(own_ca.clone(), |p| p.display().to_string());
            set_key(&mut doc, "tls", "client_ca", Some(value(ca)));
            let names: Array = names.iter().map(String::as_str).collect();
            set_key(&mut doc, "tls", "client_names", Some(value(names)));
        }
    }
    super::oauth::set_auth(&mut doc, &a.auth, &a.domain, a.tls == TlsAnswer::None);
    set_key(&mut doc, "auth", "public_read", Some(value(a.public_read)));
    let allow = if a.ip_allowlist.is_empty() {
        None
    } else {
        Some(value(
            a.ip_allowlist.iter().map(String::as_str).collect::<Array>(),
        ))
    };
    set_key(&mut doc, "network", "allow", allow);
    set_mirrors(&mut doc, &a.mirrors);
    drop_empty_tables(&mut doc);

    // Validate everything before writing anything.
    let checked = super::oauth::for_validation(&doc, &a.auth);
    let mut raw: RawConfig = toml::from_str(&checked.to_string())?;
    raw.resolve_paths(&i.dir);
    let settings = raw
        .validate()
        .context("the answers make an invalid configuration")?;
    let realm = settings.guard.token.map(|t| t.realm).unwrap_or_default();

    let created = !i.dir.exists();
    let result = (|| {
        create_private_dir(&i.dir)?;
        let mut told = String::new();
        let needs_ca =
            a.tls == TlsAnswer::OwnCa || matches!(a.auth, AuthAnswer::Mtls { ca: None, .. });
        if needs_ca && !cert::ca_paths(&i.dir).0.exists() {
            let ca = cert::init_ca(&i.dir, &format!("{} registry CA", a.domain), 3650, false)?;
            told += &format!("Created the instance's CA: {}\n", ca.display());
        }
        let server_cert = i.dir.join("tls/server.pem");
        let renew = !server_cert.exists() || old_domain.as_deref() != Some(a.domain.as_str());
        if a.tls == TlsAnswer::OwnCa && renew {
            let (cert, _) = cert::server(&i.dir, std::slice::from_ref(&a.domain), 825)?;
            told += &format!(
                "Server certificate for {}: {} (clients trust {})\n",
                a.domain,
                cert.display(),
                cert::ca_paths(&i.dir).0.display()
            );
        }
        let users = a.auth.users();
        if !users.is_empty() {
            if !i.htpasswd_path().exists() {
                write_private(&i.htpasswd_path(), b"")?;
            }
            let scheme = if a.tls == TlsAnswer::None {
                "http"
            } else {
                "https"
            };
            for (user, password) in users {
                let hash = manage::hash_password(password)?;
                manage::write_user(&i.htpasswd_path(), user, &hash)?;
                told += &format!("Hashed password: {user}:{hash}\n");
                told += &format!(
                    "Url encoded: {scheme}://{}:{}@{}/\n",
                    url_userinfo(user),
                    url_userinfo(password),
                    a.domain
                );
            }
            if a.export_passwords {
                let path = export_passwords(home, &i.name, users)?;
                told += &format!("Passwords written to {} (mode 0600)\n", path.display());
            }
        }
        told += &super::oauth::write_files(i, &realm, &a.auth)?;
        i.save(&doc)?;
        Ok::<_, anyhow::Error>(told)
    })();
    if result.is_err() && created {
        let _ = std::fs::remove_dir_all(&i.dir);
    }
    result
}

fn drop_empty_tables(doc: &mut DocumentMut) {
    let empty: Vec<String> = doc
        .iter()
        .filter(|(_, item)| item.as_table().is_some_and(|t| t.is_empty()))
        .map(|(k, _)| k.to_owned())
        .collect();
    for k in empty {
        doc.remove(&k);
    }
}

/// Merges `users` into `passwords.json` in the config home ({instance: {user: password}}),
/// mode 0600.
fn export_passwords(
    home: &Path,
    instance: &str,
    users: &[(String, String)],
) -> anyhow::Result<PathBuf> {
    let path = home.join("passwords.json");
    let mut all: BTreeMap<String, BTreeMap<String, String>> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a passwords file", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let entry = all.entry(instance.to_owned()).or_default();
    for (u, p) in users {
        entry.insert(u.clone(), p.clone());
    }
    let mut text = serde_json::to_string_pretty(&all)?;
    text.push('\n');
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// The cleartext password of `user` for `host` from passwords.json, if exported.
pub(crate) fn exported_password(
    home: &Path,
    host: &str,
    user: Option<&str>,
) -> anyhow::Result<Option<(String, String)>> {
    let path = home.join("passwords.json");
    let all: BTreeMap<String, BTreeMap<String, String>> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a passwords file", path.display()))?,
        Err(_) => return Ok(None),
    };
    for i in Instance::all(home)? {
        let Ok(s) = i.settings() else { continue };
        if s.hostname.as_deref() != Some(host) {
            continue;
        }
        if let Some(users) = all.get(&i.name) {
            let found = match user {
                Some(u) => users.get_key_value(u),
                None => users.iter().next(),
            };
            return Ok(found.map(|(u, p)| (u.clone(), p.clone())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_percent_encoded() {
        assert_eq!(url_userinfo("p@ss:w/rd ü"), "p%40ss%3Aw%2Frd%20%C3%BC");
        assert_eq!(url_userinfo("Plain-1.x_y~"), "Plain-1.x_y~");
    }
}
