//! `registry config`: the interactive wizard that sets up an instance (domain, guards, storage,
//! anonymous pull, IP allowlist, TLS), and its non-interactive twin. Every question has a flag;
//! a flag answers its question without asking. Both paths produce the same [`Answers`] and go
//! through the same [`apply`], so they write identical files. Re-running shows the current
//! values as defaults. Everything is validated before the first file is written.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, Input, Password, Select};
use toml_edit::{value, Array, DocumentMut, Item};

use crate::config::{parse_hostname, parse_storage, RawConfig};
use crate::instance::{create_private_dir, set_key, write_private, Instance};
use crate::{cert, manage};

/// The flags of `registry config`: one per question.
#[derive(Args, Debug, Default)]
pub struct ConfigArgs {
    /// The instance to configure [default: default].
    #[arg(long, default_value = crate::instance::DEFAULT)]
    pub instance: String,
    /// Ask nothing: fail naming any answer that is missing.
    #[arg(long)]
    pub non_interactive: bool,
    /// The registry's domain name (clients push to DOMAIN/repository).
    #[arg(long)]
    pub domain: Option<String>,
    /// Address to listen on [default: 0.0.0.0:443 with TLS, else 127.0.0.1:5000].
    #[arg(long)]
    pub listen: Option<String>,
    /// TLS: "ca" (a certificate from the instance's own CA), "files" (--tls-cert/--tls-key),
    /// or "none" (plain HTTP, e.g. behind a TLS-terminating proxy).
    #[arg(long, value_name = "ca|files|none")]
    pub tls: Option<String>,
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Authorization in front of the registry: none, basic (HTTP Basic) or mtls.
    #[arg(long, value_name = "none|basic|mtls")]
    pub auth: Option<String>,
    /// A Basic user to create (repeat for more); passwords are generated unless
    /// --password-stdin gives them, one line per user.
    #[arg(long = "user", value_name = "NAME")]
    pub users: Vec<String>,
    /// Read the passwords of --user from stdin, one per line, in order.
    #[arg(long)]
    pub password_stdin: bool,
    /// Write the users' cleartext passwords to passwords.json in the config home (0600).
    #[arg(long, value_name = "true|false")]
    pub export_passwords: Option<bool>,
    /// mTLS: the CA of client certificates, a PEM file, or "create" for the instance's own CA.
    #[arg(long, value_name = "FILE|create")]
    pub client_ca: Option<String>,
    /// mTLS: authorized client names, comma-separated; `*` stands for one DNS label.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub client_names: Option<Vec<String>>,
    /// Storage: a directory (relative to the instance directory) or s3://bucket/prefix.
    #[arg(long)]
    pub storage: Option<String>,
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    #[arg(long)]
    pub s3_region: Option<String>,
    #[arg(long)]
    pub s3_access_key_id: Option<String>,
    /// Prefer AWS_SECRET_ACCESS_KEY in the environment: arguments are visible to other users.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Allow anonymous read-only pull.
    #[arg(long, value_name = "true|false")]
    pub public_read: Option<bool>,
    /// Addresses that may connect (CIDRs, comma-separated); empty for everyone.
    #[arg(long, value_name = "CIDRS")]
    pub ip_allowlist: Option<String>,
}

/// How clients reach the instance over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsAnswer {
    None,
    /// A server certificate from the instance's CA (created when missing).
    OwnCa,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAnswer {
    None,
    /// Users to add or update, with their passwords.
    Basic(Vec<(String, String)>),
    Mtls {
        /// `None`: the instance's own CA (created when missing).
        ca: Option<PathBuf>,
        names: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Answer {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Everything the wizard asks.
#[derive(Debug, Clone)]
pub struct Answers {
    pub domain: String,
    pub listen: String,
    pub tls: TlsAnswer,
    pub auth: AuthAnswer,
    pub export_passwords: bool,
    pub storage: String,
    pub s3: Option<S3Answer>,
    pub public_read: bool,
    pub ip_allowlist: Vec<String>,
}

/// What an existing instance says, as defaults for a re-run.
#[derive(Default)]
struct Current {
    domain: Option<String>,
    listen: Option<String>,
    tls: Option<TlsAnswer>,
    auth: Option<&'static str>,
    client_ca: Option<PathBuf>,
    client_names: Vec<String>,
    users: Vec<String>,
    storage: Option<String>,
    s3: Option<crate::config::S3Location>,
    public_read: bool,
    ip_allowlist: Vec<String>,
}

fn current(i: &Instance) -> anyhow::Result<Current> {
    if !i.config_path().exists() {
        return Ok(Current::default());
    }
    let raw = RawConfig::load(&i.config_path())?;
    let own_ca = cert::ca_paths(Path::new("")).0;
    let tls = match (&raw.tls.cert, &raw.tls.key) {
        (Some(c), _) if c == Path::new("tls/server.pem") => Some(TlsAnswer::OwnCa),
        (Some(c), Some(k)) => Some(TlsAnswer::Files {
            cert: c.clone(),
            key: k.clone(),
        }),
        _ => Some(TlsAnswer::None),
    };
    let auth = match (&raw.auth.htpasswd, &raw.tls.client_ca) {
        (_, Some(_)) => "mtls",
        (Some(_), None) => "basic",
        (None, None) => "none",
    };
    Ok(Current {
        domain: raw.instance.hostname.clone(),
        listen: raw.server.listen.clone(),
        tls,
        auth: Some(auth),
        client_ca: raw.tls.client_ca.clone().filter(|c| *c != own_ca),
        client_names: raw.tls.client_names.clone().unwrap_or_default(),
        users: manage::users(i).unwrap_or_default(),
        storage: raw.storage.url.clone(),
        s3: raw.storage.s3.clone(),
        public_read: raw.auth.public_read.unwrap_or(false),
        ip_allowlist: raw.network.allow.clone().unwrap_or_default(),
    })
}

/// A default domain: the machine's host name.
fn machine_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| parse_hostname(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Asks (or takes from flags) every answer.
pub fn gather(i: &Instance, a: &ConfigArgs) -> anyhow::Result<Answers> {
    let cur = current(i)?;
    let mut ask = Asker::new(a.non_interactive)?;
    let domain = match &a.domain {
        Some(d) => parse_hostname(d)?,
        None => {
            let default = cur
                .domain
                .clone()
                .or_else(|| (!a.non_interactive).then(machine_hostname));
            ask.text("The registry's domain name", "--domain", default, |s| {
                parse_hostname(s).map(|_| ())
            })?
            .to_ascii_lowercase()
        }
    };

    const AUTH: [&str; 3] = [
        "No",
        "Yes, with HTTP Basic Authentication",
        "Yes, with Mutual TLS (mTLS)",
    ];
    let auth_kind = match a.auth.as_deref() {
        Some(k @ ("none" | "basic" | "mtls")) => k,
        Some(other) => bail!("--auth {other:?}: expected none, basic or mtls"),
        None => {
            let default = match cur.auth {
                Some("basic") => 1,
                Some("mtls") => 2,
                _ => 0,
            };
            let has_default = cur.auth.is_some();
            let picked = ask.select(
                "Do you want to enable sentry authorization in front of this app?",
                "--auth",
                &AUTH,
                has_default.then_some(default),
            )?;
            ["none", "basic", "mtls"][picked]
        }
    };
    let mut export_passwords = a.export_passwords.unwrap_or(false);
    let auth = match auth_kind {
        "none" => AuthAnswer::None,
        "basic" => {
            let users = basic_users(&mut ask, a, &cur)?;
            if a.export_passwords.is_none() && !users.is_empty() {
                export_passwords = ask.confirm(
                    "Export usernames and cleartext passwords to passwords.json?",
                    "--export-passwords",
                    Some(false),
                )?;
            }
            AuthAnswer::Basic(users)
        }
        _ => {
            let ca = match a.client_ca.as_deref() {
                Some("create") => None,
                Some(file) => Some(PathBuf::from(file)),
                None => {
                    let choices = [
                        "Create one (registry cert init-ca)",
                        "Use a CA certificate file",
                    ];
                    let default = Some(usize::from(cur.client_ca.is_some()));
                    match ask.select(
                        "The CA of client certificates",
                        "--client-ca",
                        &choices,
                        default,
                    )? {
                        0 => None,
                        _ => Some(PathBuf::from(ask.text(
                            "CA certificate file (PEM)",
                            "--client-ca",
                            cur.client_ca.as_ref().map(|p| p.display().to_string()),
                            |s| match Path::new(s).is_file() {
                                true => Ok(()),
                                false => bail!("{s} is not a file"),
                            },
                        )?)),
                    }
                }
            };
            let names = match &a.client_names {
                Some(n) => n.clone(),
                None => split_list(&ask.text(
                    "Authorized client names (comma-separated; * stands for one label)",
                    "--client-names",
                    (!cur.client_names.is_empty()).then(|| cur.client_names.join(",")),
                    |s| check_names(&split_list(s)),
                )?),
            };
            check_names(&names)?;
            AuthAnswer::Mtls { ca, names }
        }
    };

    let (storage, s3) = storage_answers(&mut ask, a, &cur)?;

    let public_read = match a.public_read {
        Some(p) => p,
        None => ask.confirm(
            "Allow anonymous read-only pull?",
            "--public-read",
            Some(cur.public_read),
        )?,
    };
    let ip_allowlist = match &a.ip_allowlist {
        Some(list) => split_list(list),
        None => split_list(&ask.text_allow_empty(
            "IP allowlist (CIDRs, comma-separated; blank for everyone)",
            &cur.ip_allowlist.join(","),
        )?),
    };
    registry_auth::ip::IpRanges::parse(&ip_allowlist)
        .map_err(anyhow::Error::msg)
        .context("IP allowlist")?;

    let tls = match (a.tls.as_deref(), &a.tls_cert, &a.tls_key) {
        (Some("files") | None, Some(c), Some(k)) => TlsAnswer::Files {
            cert: c.clone(),
            key: k.clone(),
        },
        (Some("files"), _, _) => bail!("--tls files needs --tls-cert and --tls-key"),
        (Some("ca"), _, _) => TlsAnswer::OwnCa,
        (Some("none"), _, _) => TlsAnswer::None,
        (Some(other), _, _) => bail!("--tls {other:?}: expected ca, files or none"),
        (None, _, _) => {
            let choices = [
                "HTTPS with a certificate from the instance's own CA",
                "HTTPS with certificate files I have (e.g. Let's Encrypt)",
                "Plain HTTP (a TLS-terminating proxy is in front)",
            ];
            let default = cur.tls.as_ref().map(|t| match t {
                TlsAnswer::OwnCa => 0,
                TlsAnswer::Files { .. } => 1,
                TlsAnswer::None => 2,
            });
            let default = match (&auth, default) {
                (_, Some(d)) => Some(d),
                // Client certificates need TLS here.
                (AuthAnswer::Mtls { .. }, None) => Some(0),
                _ => None,
            };
            match ask.select("TLS", "--tls", &choices, default)? {
                0 => TlsAnswer::OwnCa,
                1 => {
                    let (c, k) = match &cur.tls {
                        Some(TlsAnswer::Files { cert, key }) => (
                            Some(cert.display().to_string()),
                            Some(key.display().to_string()),
                        ),
                        _ => (None, None),
                    };
                    let file = |s: &str| match Path::new(s).is_file() {
                        true => Ok(()),
                        false => bail!("{s} is not a file"),
                    };
                    TlsAnswer::Files {
                        cert: ask
                            .text("Certificate chain (PEM)", "--tls-cert", c, file)?
                            .into(),
                        key: ask.text("Private key (PEM)", "--tls-key", k, file)?.into(),
                    }
                }
                _ => TlsAnswer::None,
            }
        }
    };
    if matches!(auth, AuthAnswer::Mtls { .. }) && tls == TlsAnswer::None {
        bail!("mutual TLS needs TLS served by the registry: choose --tls ca or files");
    }
    let listen = match &a.listen {
        Some(l) => l.clone(),
        None => cur.listen.clone().unwrap_or_else(|| {
            match tls {
                TlsAnswer::None => "127.0.0.1:5000",
                _ => "0.0.0.0:443",
            }
            .to_owned()
        }),
    };
    Ok(Answers {
        domain,
        listen,
        tls,
        auth,
        export_passwords,
        storage,
        s3,
        public_read,
        ip_allowlist,
    })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn check_names(names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        bail!("name at least one authorized client name");
    }
    for n in names {
        registry_auth::pattern::NamePattern::parse(n).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Basic users: from --user (passwords from stdin or generated), or asked one by one.
fn basic_users(
    ask: &mut Asker,
    a: &ConfigArgs,
    cur: &Current,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut users = Vec::new();
    if !a.users.is_empty() {
        let mut passwords = Vec::new();
        if a.password_stdin {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            passwords = text.lines().map(str::to_owned).collect();
            if passwords.len() < a.users.len() {
                bail!(
                    "--password-stdin: {} passwords for {} users (one line each)",
                    passwords.len(),
                    a.users.len()
                );
            }
        }
        for (k, user) in a.users.iter().enumerate() {
            manage::check_user(user)?;
            let password = match passwords.get(k) {
                Some(p) if !p.is_empty() => p.clone(),
                _ => {
                    let p = manage::generate_password();
                    eprintln!("Generated passphrase for {user}: {p}");
                    p
                }
            };
            users.push((user.clone(), password));
        }
    } else if ask.interactive {
        if !cur.users.is_empty() {
            ask.say(&format!("Current users: {}", cur.users.join(", ")));
            if !ask.confirm("Create more users?", "--user", Some(false))? {
                return Ok(users);
            }
        }
        loop {
            let user = ask.text("Username", "--user", None, manage::check_user)?;
            let password = ask.password("Passphrase (leave blank to generate a strong one)")?;
            let password = match password.is_empty() {
                true => {
                    let p = manage::generate_password();
                    ask.say(&format!("Generated passphrase: {p}"));
                    p
                }
                false => password,
            };
            users.push((user, password));
            if !ask.confirm("Create another user (same rights)?", "--user", Some(false))? {
                break;
            }
        }
    } else if cur.users.is_empty() {
        bail!("missing answer: --user (HTTP Basic needs at least one user)");
    }
    Ok(users)
}

fn storage_answers(
    ask: &mut Asker,
    a: &ConfigArgs,
    cur: &Current,
) -> anyhow::Result<(String, Option<S3Answer>)> {
    let url = match &a.storage {
        Some(s) => s.clone(),
        None => {
            let was_s3 = cur
                .storage
                .as_deref()
                .is_some_and(|s| s.starts_with("s3://"));
            let kind = ask.select(
                "Storage",
                "--storage",
                &["Filesystem", "S3-compatible object store"],
                Some(usize::from(was_s3)),
            )?;
            match kind {
                0 => ask.text(
                    "Directory (relative to the instance directory, or absolute)",
                    "--storage",
                    Some(
                        cur.storage
                            .clone()
                            .filter(|_| !was_s3)
                            .unwrap_or_else(|| "data".into()),
                    ),
                    |s| parse_storage(s).map(|_| ()),
                )?,
                _ => {
                    let bucket = ask.text(
                        "Bucket and prefix (bucket/prefix)",
                        "--storage",
                        cur.storage
                            .as_deref()
                            .filter(|_| was_s3)
                            .map(|s| s.trim_start_matches("s3://").to_owned()),
                        |s| parse_storage(&format!("s3://{s}")).map(|_| ()),
                    )?;
                    format!("s3://{bucket}")
                }
            }
        }
    };
    parse_storage(&url)?;
    if !url.starts_with("s3://") {
        return Ok((url, None));
    }
    let old = cur.s3.clone().unwrap_or_default();
    // Unanswered S3 settings keep their current value (or come from AWS_* variables).
    let mut field = |flag: &Option<String>, prompt: &str, old: Option<String>| match flag {
        Some(v) => anyhow::Ok(Some(v.clone())),
        None if ask.interactive => {
            let v = ask.text_allow_empty(prompt, old.as_deref().unwrap_or(""))?;
            Ok((!v.is_empty()).then_some(v))
        }
        None => Ok(old),
    };
    let endpoint = field(
        &a.s3_endpoint,
        "S3 endpoint URL (blank for AWS)",
        old.endpoint.clone(),
    )?;
    let region = field(&a.s3_region, "S3 region (auto for R2)", old.region.clone())?;
    let access_key_id = field(
        &a.s3_access_key_id,
        "S3 access key id",
        old.access_key_id.clone(),
    )?;
    let secret_access_key = match &a.s3_secret_access_key {
        Some(s) => Some(s.clone()),
        None if ask.interactive => {
            let s =
                ask.password("S3 secret access key (blank to keep / use AWS_SECRET_ACCESS_KEY)")?;
            match s.is_empty() {
                true => old.secret_access_key.map(|s| s.0),
                false => Some(s),
            }
        }
        None => old.secret_access_key.map(|s| s.0),
    };
    Ok((
        url,
        Some(S3Answer {
            endpoint,
            region,
            access_key_id,
            secret_access_key,
        }),
    ))
}

/// Asks questions on the terminal, or refuses to when non-interactive.
struct Asker {
    interactive: bool,
    theme: ColorfulTheme,
}

impl Asker {
    fn new(non_interactive: bool) -> anyhow::Result<Asker> {
        let interactive = !non_interactive;
        if interactive && !std::io::stderr().is_terminal() {
            bail!("registry config asks questions on a terminal; without one, pass --non-interactive and the answers as flags (see --help)");
        }
        Ok(Asker {
            interactive,
            theme: ColorfulTheme::default(),
        })
    }

    fn missing(flag: &str) -> anyhow::Error {
        anyhow::anyhow!("missing answer: {flag} (--non-interactive asks nothing)")
    }

    fn say(&self, line: &str) {
        if self.interactive {
            eprintln!("{line}");
        }
    }

    fn text(
        &mut self,
        prompt: &str,
        flag: &str,
        default: Option<String>,
        check: impl Fn(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<String> {
        if !self.interactive {
            let v = default.ok_or_else(|| Asker::missing(flag))?;
            check(&v)?;
            return Ok(v);
        }
        let mut input = Input::<String>::with_theme(&self.theme).with_prompt(prompt);
        if let Some(d) = default {
            input = input.default(d);
        }
        let v = input
            .validate_with(|s: &String| check(s.trim()).map_err(|e| e.to_string()))
            .interact_text()?;
        Ok(v.trim().to_owned())
    }

    fn text_allow_empty(&mut self, prompt: &str, default: &str) -> anyhow::Result<String> {
        if !self.interactive {
            return Ok(default.to_owned());
        }
        let v = Input::<String>::with_theme(&self.theme)
            .with_prompt(prompt)
            .with_initial_text(default)
            .allow_empty(true)
            .interact_text()?;
        Ok(v.trim().to_owned())
    }

    fn password(&mut self, prompt: &str) -> anyhow::Result<String> {
        Ok(Password::with_theme(&self.theme)
            .with_prompt(prompt)
            .allow_empty_password(true)
            .interact()?)
    }

    fn select(
        &mut self,
        prompt: &str,
        flag: &str,
        choices: &[&str],
        default: Option<usize>,
    ) -> anyhow::Result<usize> {
        if !self.interactive {
            return default.ok_or_else(|| Asker::missing(flag));
        }
        Ok(Select::with_theme(&self.theme)
            .with_prompt(prompt)
            .items(choices)
            .default(default.unwrap_or(0))
            .interact()?)
    }

    fn confirm(&mut self, prompt: &str, flag: &str, default: Option<bool>) -> anyhow::Result<bool> {
        if !self.interactive {
            return default.ok_or_else(|| Asker::missing(flag));
        }
        Ok(Confirm::with_theme(&self.theme)
            .with_prompt(prompt)
            .default(default.unwrap_or(false))
            .wait_for_newline(true)
            .interact()?)
    }
}

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

/// Writes the instance: validates the new registry.toml first, then certificates, users, the
/// password export, and the registry.toml last. Returns what to tell the person.
pub fn apply(home: &Path, i: &Instance, answers: &Answers) -> anyhow::Result<String> {
    let existed = i.config_path().exists();
    let mut doc = match existed {
        true => i.document()?,
        false => {
            let mut d = DocumentMut::new();
            d.decor_mut().set_prefix(format!(
                "# Registry instance {:?}, written by `registry config`; see `registry check`.\n",
                i.name
            ));
            d
        }
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
        TlsAnswer::None => (None, None),
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
    set_key(&mut doc, "auth", "public_read", Some(value(a.public_read)));
    let allow = match a.ip_allowlist.is_empty() {
        true => None,
        false => Some(value(
            a.ip_allowlist.iter().map(String::as_str).collect::<Array>(),
        )),
    };
    set_key(&mut doc, "network", "allow", allow);
    drop_empty_tables(&mut doc);

    // Validate everything before writing anything.
    let mut raw: RawConfig = toml::from_str(&doc.to_string())?;
    raw.resolve_paths(&i.dir);
    raw.validate()
        .context("the answers make an invalid configuration")?;

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
        if let AuthAnswer::Basic(users) = &a.auth {
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
            if a.export_passwords && !users.is_empty() {
                let path = export_passwords(home, &i.name, users)?;
                told += &format!("Passwords written to {} (mode 0600)\n", path.display());
            }
        }
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
pub fn exported_password(
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
