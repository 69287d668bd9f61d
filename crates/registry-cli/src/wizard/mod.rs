//! `registry config`: the interactive wizard that sets up an instance (domain, guards, storage,
//! anonymous pull, IP allowlist, TLS), and its non-interactive twin. Every question has a flag;
//! a flag answers its question without asking. Both paths produce the same [`Answers`] and go
//! through the same [`apply`], so they write identical files. Re-running shows the current
//! values as defaults. Everything is validated before the first file is written.

mod apply;
mod asker;
mod oauth;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

pub(crate) use apply::{apply, exported_password};
use asker::Asker;

use crate::config::{parse_hostname, parse_storage, RawConfig};
use crate::instance::Instance;
use crate::{cert, manage};

/// The flags of `registry config`: one per question.
#[derive(Args, Debug, Default)]
pub(crate) struct ConfigArgs {
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
    /// TLS: a certificate from Let's Encrypt or another ACME CA (automatic, renewed), from the
    /// instance's own CA, certificate files (--tls-cert and --tls-key), or none (plain HTTP,
    /// e.g. behind a TLS-terminating proxy).
    #[arg(long, value_enum)]
    pub tls: Option<TlsArg>,
    /// ACME: the contact email of the account (the CA's expiry warnings go there).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// ACME: the directory URL, or "letsencrypt-staging" [default: Let's Encrypt].
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,
    /// ACME: trust this PEM root for the directory's own HTTPS (a private CA such as step-ca).
    #[arg(long, value_name = "FILE")]
    pub acme_directory_ca: Option<PathBuf>,
    /// ACME: the challenge: tls-alpn-01 on the HTTPS port, or http-01 on port 80.
    #[arg(long, value_enum)]
    pub acme_challenge: Option<ChallengeArg>,
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Authorization in front of the registry.
    #[arg(long, value_enum)]
    pub auth: Option<AuthArg>,
    /// A Basic user to create (repeat for more); passwords are generated unless
    /// --password-stdin gives them, one line per user.
    #[arg(long = "user", value_name = "NAME")]
    pub users: Vec<String>,
    /// OAuth2: the OpenID Connect provider people sign in with (its issuer URL).
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// OAuth2: the registry's client id at the provider.
    #[arg(long, value_name = "ID")]
    pub oidc_client_id: Option<String>,
    /// OAuth2: the client secret (prefer the environment: arguments are visible to others).
    #[arg(long, env = "REGISTRY_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// OAuth2: who may sign in, by email address (comma-separated).
    #[arg(long, value_name = "EMAILS")]
    pub allowed_emails: Option<String>,
    /// OAuth2: … by email domain (comma-separated).
    #[arg(long, value_name = "DOMAINS")]
    pub allowed_domains: Option<String>,
    /// OAuth2: … by group (comma-separated).
    #[arg(long, value_name = "GROUPS")]
    pub allowed_groups: Option<String>,
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
    /// A pull-through cache of another registry for PREFIX/… (repeat for more; the instance's
    /// mirrors become these), e.g. docker.io=https://registry-1.docker.io; "none" for none.
    /// Credentials and the rest: `registry reconfigure mirror.PREFIX.FIELD=VALUE`.
    #[arg(long = "mirror", value_name = "PREFIX=URL")]
    pub mirrors: Vec<String>,
}

/// Docker Hub's registry, as Docker pulls from it.
pub(crate) const DOCKER_HUB: (&str, &str) = ("docker.io", "https://registry-1.docker.io");

/// What becomes of the instance's mirrors (`[[proxy]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MirrorAnswer {
    /// Exactly these (prefix, URL); an existing entry keeps its other settings.
    Set(Vec<(String, String)>),
    /// Whether Docker Hub is cached; other mirrors stay as they are.
    DockerHub(bool),
}

/// `--auth`: who may use the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AuthArg {
    /// Everyone who can reach it.
    None,
    /// HTTP Basic users.
    Basic,
    /// Clients with a certificate from the client CA (mutual TLS).
    Mtls,
    /// Bearer tokens from the built-in token service: people sign in with an OpenID Connect
    /// provider, machines and password users log in for tokens.
    Oauth2,
}

/// `--acme-challenge`: how the CA checks the domain is ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChallengeArg {
    /// Answered on the HTTPS listener itself (the CA connects to port 443).
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
    /// Answered on a plain listener on port 80, which redirects everything else to HTTPS.
    #[value(name = "http-01")]
    Http01,
}

/// `--tls`: how clients reach the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum TlsArg {
    /// HTTPS with a certificate from Let's Encrypt or another ACME CA (automatic).
    Acme,
    /// HTTPS with a certificate from the instance's own CA.
    Ca,
    /// HTTPS with certificate files (--tls-cert, --tls-key).
    Files,
    /// Plain HTTP.
    None,
}

/// How clients reach the instance over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsAnswer {
    None,
    /// Certificates from an ACME CA, obtained and renewed by the registry.
    Acme {
        email: Option<String>,
        /// `None`: Let's Encrypt.
        directory: Option<String>,
        directory_ca: Option<PathBuf>,
        http01: bool,
    },
    /// A server certificate from the instance's CA (created when missing).
    OwnCa,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthAnswer {
    None,
    /// Users to add or update, with their passwords.
    Basic(Vec<(String, String)>),
    Mtls {
        /// `None`: the instance's own CA (created when missing).
        ca: Option<PathBuf>,
        names: Vec<String>,
    },
    /// The built-in token service, with password users and/or an OpenID Connect provider.
    OAuth2 {
        users: Vec<(String, String)>,
        oidc: Option<oauth::OidcAnswer>,
    },
}

impl AuthAnswer {
    /// The password users to add or update.
    pub(crate) fn users(&self) -> &[(String, String)] {
        match self {
            AuthAnswer::Basic(users) | AuthAnswer::OAuth2 { users, .. } => users,
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Answer {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Everything the wizard asks.
#[derive(Debug, Clone)]
pub(crate) struct Answers {
    pub domain: String,
    pub listen: String,
    pub tls: TlsAnswer,
    pub auth: AuthAnswer,
    pub export_passwords: bool,
    pub storage: String,
    pub s3: Option<S3Answer>,
    pub public_read: bool,
    pub ip_allowlist: Vec<String>,
    pub mirrors: MirrorAnswer,
}

/// What an existing instance says, as defaults for a re-run.
#[derive(Default)]
struct Current {
    domain: Option<String>,
    listen: Option<String>,
    tls: Option<TlsAnswer>,
    auth: Option<AuthArg>,
    client_ca: Option<PathBuf>,
    client_names: Vec<String>,
    users: Vec<String>,
    storage: Option<String>,
    s3: Option<crate::config::S3Location>,
    public_read: bool,
    ip_allowlist: Vec<String>,
    oidc: Option<oauth::CurrentOidc>,
    /// Whether Docker Hub is mirrored.
    docker_hub: bool,
}

fn current(i: &Instance) -> anyhow::Result<Current> {
    if !i.config_path().exists() {
        return Ok(Current::default());
    }
    let raw = RawConfig::load(&i.config_path())?;
    let own_ca = cert::ca_paths(Path::new("")).0;
    let tls = match (&raw.tls.cert, &raw.tls.key) {
        _ if raw.tls.acme.is_some() => {
            let acme = raw.tls.acme.as_ref().expect("checked");
            Some(TlsAnswer::Acme {
                email: acme.email.clone(),
                directory: acme.directory.clone(),
                directory_ca: acme.directory_ca.clone(),
                http01: acme.challenge.as_deref() == Some("http-01"),
            })
        }
        (Some(c), _) if c == Path::new("tls/server.pem") => Some(TlsAnswer::OwnCa),
        (Some(c), Some(k)) => Some(TlsAnswer::Files {
            cert: c.clone(),
            key: k.clone(),
        }),
        _ => Some(TlsAnswer::None),
    };
    let auth = match (&raw.auth.htpasswd, &raw.tls.client_ca) {
        _ if raw.auth.mode.as_deref() == Some("token") => AuthArg::Oauth2,
        (_, Some(_)) => AuthArg::Mtls,
        (Some(_), None) => AuthArg::Basic,
        (None, None) => AuthArg::None,
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
        oidc: oauth::CurrentOidc::of(&raw),
        docker_hub: raw
            .proxy
            .iter()
            .any(|p| p.prefix.as_deref() == Some(DOCKER_HUB.0)),
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

/// Asks (or takes from flags) every answer, one question after the other.
pub(crate) fn gather(i: &Instance, a: &ConfigArgs) -> anyhow::Result<Answers> {
    let cur = current(i)?;
    let mut ask = Asker::new(a.non_interactive)?;
    let domain = ask_domain(&mut ask, a, &cur)?;
    let (auth, export_passwords) = ask_auth(&mut ask, a, &cur)?;
    let (storage, s3) = storage_answers(&mut ask, a, &cur)?;
    let public_read = match a.public_read {
        Some(p) => p,
        None => ask.confirm(
            "Allow anonymous read-only pull?",
            "--public-read",
            Some(cur.public_read),
        )?,
    };
    let ip_allowlist = ask_ip_allowlist(&mut ask, a, &cur)?;
    let mirrors = ask_mirrors(&mut ask, a, &cur)?;
    let tls = ask_tls(&mut ask, a, &cur, &auth)?;
    if matches!(auth, AuthAnswer::Mtls { .. }) && tls == TlsAnswer::None {
        bail!("mutual TLS needs TLS served by the registry: choose --tls acme, ca or files");
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
        mirrors,
    })
}

/// Mirrors: from `--mirror` flags, else whether to cache Docker Hub.
fn ask_mirrors(ask: &mut Asker, a: &ConfigArgs, cur: &Current) -> anyhow::Result<MirrorAnswer> {
    if a.mirrors.iter().any(|m| m == "none") {
        if a.mirrors.len() > 1 {
            bail!("--mirror none means no mirrors: give it alone");
        }
        return Ok(MirrorAnswer::Set(Vec::new()));
    }
    if !a.mirrors.is_empty() {
        let mut set = Vec::new();
        for m in &a.mirrors {
            let Some((prefix, url)) = m.split_once('=') else {
                bail!(
                    "--mirror {m:?}: expected PREFIX=URL (docker.io=https://registry-1.docker.io)"
                );
            };
            let prefix = prefix.trim().trim_end_matches('/');
            if set.iter().any(|(p, _): &(String, String)| p == prefix) {
                bail!("--mirror {prefix:?} is given twice");
            }
            set.push((prefix.to_owned(), url.trim().to_owned()));
        }
        return Ok(MirrorAnswer::Set(set));
    }
    let yes = ask.confirm(
        "Cache Docker Hub here too (a pull-through mirror: docker.io/… and Docker's registry-mirrors)?",
        "--mirror",
        Some(cur.docker_hub),
    )?;
    Ok(MirrorAnswer::DockerHub(yes))
}

/// The registry's domain name.
fn ask_domain(ask: &mut Asker, a: &ConfigArgs, cur: &Current) -> anyhow::Result<String> {
    if let Some(d) = &a.domain {
        return parse_hostname(d);
    }
    let default = cur
        .domain
        .clone()
        .or_else(|| (!a.non_interactive).then(machine_hostname));
    let domain = ask.text("The registry's domain name", "--domain", default, |s| {
        parse_hostname(s).map(|_| ())
    })?;
    Ok(domain.to_ascii_lowercase())
}

/// Who may use the registry, and (for Basic users) whether their passwords are exported.
fn ask_auth(ask: &mut Asker, a: &ConfigArgs, cur: &Current) -> anyhow::Result<(AuthAnswer, bool)> {
    const CHOICES: [&str; 4] = [
        "No",
        "Yes, with HTTP Basic Authentication",
        "Yes, with Mutual TLS (mTLS)",
        "Yes, with OAuth2 (single sign-on with OpenID Connect, tokens for CI)",
    ];
    const KINDS: [AuthArg; 4] = [
        AuthArg::None,
        AuthArg::Basic,
        AuthArg::Mtls,
        AuthArg::Oauth2,
    ];
    let kind = match a.auth {
        Some(kind) => kind,
        None => {
            let default = cur.auth.and_then(|c| KINDS.iter().position(|k| *k == c));
            let picked = ask.select(
                "Do you want to enable sentry authorization in front of this app?",
                "--auth",
                &CHOICES,
                default,
            )?;
            KINDS[picked]
        }
    };
    let mut export_passwords = a.export_passwords.unwrap_or(false);
    let auth = match kind {
        AuthArg::None => AuthAnswer::None,
        AuthArg::Basic => {
            let users = basic_users(ask, a, cur)?;
            if a.export_passwords.is_none() && !users.is_empty() {
                export_passwords = ask.confirm(
                    "Export usernames and cleartext passwords to passwords.json?",
                    "--export-passwords",
                    Some(false),
                )?;
            }
            AuthAnswer::Basic(users)
        }
        AuthArg::Mtls => ask_mtls(ask, a, cur)?,
        AuthArg::Oauth2 => {
            let answer = oauth::ask_oauth(ask, a, cur)?;
            if a.export_passwords.is_none() && !answer.users().is_empty() {
                export_passwords = ask.confirm(
                    "Export usernames and cleartext passwords to passwords.json?",
                    "--export-passwords",
                    Some(false),
                )?;
            }
            answer
        }
    };
    Ok((auth, export_passwords))
}

/// Mutual TLS: the CA of client certificates and the names it may sign for.
fn ask_mtls(ask: &mut Asker, a: &ConfigArgs, cur: &Current) -> anyhow::Result<AuthAnswer> {
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
                    is_file,
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
    Ok(AuthAnswer::Mtls { ca, names })
}

/// The addresses that may connect.
fn ask_ip_allowlist(ask: &mut Asker, a: &ConfigArgs, cur: &Current) -> anyhow::Result<Vec<String>> {
    let list = match &a.ip_allowlist {
        Some(list) => split_list(list),
        None => split_list(&ask.text_allow_empty(
            "IP allowlist (CIDRs, comma-separated; blank for everyone)",
            &cur.ip_allowlist.join(","),
        )?),
    };
    registry_auth::ip::IpRanges::parse(&list).context("IP allowlist")?;
    Ok(list)
}

/// How clients reach the registry: the instance's own CA, certificate files, or plain HTTP.
fn ask_tls(
    ask: &mut Asker,
    a: &ConfigArgs,
    cur: &Current,
    auth: &AuthAnswer,
) -> anyhow::Result<TlsAnswer> {
    match (a.tls, &a.tls_cert, &a.tls_key) {
        (Some(TlsArg::Files) | None, Some(c), Some(k)) => {
            return Ok(TlsAnswer::Files {
                cert: c.clone(),
                key: k.clone(),
            })
        }
        (Some(TlsArg::Files), _, _) => bail!("--tls files needs --tls-cert and --tls-key"),
        (Some(TlsArg::Ca), _, _) => return Ok(TlsAnswer::OwnCa),
        (Some(TlsArg::None), _, _) => return Ok(TlsAnswer::None),
        (Some(TlsArg::Acme), _, _) => return ask_acme(ask, a, cur),
        (None, _, _) => {}
    }
    let choices = [
        "HTTPS with a Let's Encrypt certificate (automatic)",
        "HTTPS with a certificate from the instance's own CA",
        "HTTPS with certificate files I have",
        "Plain HTTP (a TLS-terminating proxy is in front)",
    ];
    let default = cur.tls.as_ref().map(|t| match t {
        TlsAnswer::Acme { .. } => 0,
        TlsAnswer::OwnCa => 1,
        TlsAnswer::Files { .. } => 2,
        TlsAnswer::None => 3,
    });
    let default = match (auth, default) {
        (_, Some(d)) => Some(d),
        // Client certificates need TLS here.
        (AuthAnswer::Mtls { .. }, None) => Some(1),
        _ => None,
    };
    Ok(match ask.select("TLS", "--tls", &choices, default)? {
        0 => ask_acme(ask, a, cur)?,
        1 => TlsAnswer::OwnCa,
        2 => {
            let (c, k) = match &cur.tls {
                Some(TlsAnswer::Files { cert, key }) => (
                    Some(cert.display().to_string()),
                    Some(key.display().to_string()),
                ),
                _ => (None, None),
            };
            TlsAnswer::Files {
                cert: ask
                    .text("Certificate chain (PEM)", "--tls-cert", c, is_file)?
                    .into(),
                key: ask
                    .text("Private key (PEM)", "--tls-key", k, is_file)?
                    .into(),
            }
        }
        _ => TlsAnswer::None,
    })
}

/// ACME: the contact email (asked), the directory, its roots and the challenge (flags).
fn ask_acme(ask: &mut Asker, a: &ConfigArgs, cur: &Current) -> anyhow::Result<TlsAnswer> {
    let old = match &cur.tls {
        Some(TlsAnswer::Acme {
            email,
            directory,
            directory_ca,
            http01,
        }) => Some((
            email.clone(),
            directory.clone(),
            directory_ca.clone(),
            *http01,
        )),
        _ => None,
    };
    let email = match &a.acme_email {
        Some(e) => Some(e.clone()),
        None => {
            let default = old.as_ref().and_then(|o| o.0.clone()).unwrap_or_default();
            Some(ask.text_allow_empty(
                "Contact email for Let's Encrypt (expiry warnings; blank for none)",
                &default,
            )?)
            .filter(|e| !e.is_empty())
        }
    };
    if let Some(e) = &email {
        if !e.contains('@') || e.contains(char::is_whitespace) {
            bail!("{e:?} is not an email address");
        }
    }
    let directory = a
        .acme_directory
        .clone()
        .or_else(|| old.as_ref().and_then(|o| o.1.clone()));
    let directory_ca = a
        .acme_directory_ca
        .clone()
        .or_else(|| old.as_ref().and_then(|o| o.2.clone()));
    if let Some(ca) = &directory_ca {
        is_file(&ca.display().to_string()).context("--acme-directory-ca")?;
    }
    let http01 = match a.acme_challenge {
        Some(c) => c == ChallengeArg::Http01,
        None => old.is_some_and(|o| o.3),
    };
    Ok(TlsAnswer::Acme {
        email,
        directory,
        directory_ca,
        http01,
    })
}

fn is_file(s: &str) -> anyhow::Result<()> {
    if Path::new(s).is_file() {
        Ok(())
    } else {
        bail!("{s} is not a file")
    }
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
        registry_auth::pattern::NamePattern::parse(n)?;
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
            let password = if password.is_empty() {
                let p = manage::generate_password();
                ask.say(&format!("Generated passphrase: {p}"));
                p
            } else {
                password
            };
            users.push((user, password));
            if !ask.confirm("Create another user (same rights)?", "--user", Some(false))? {
                break;
            }
        }
    } else if cur.users.is_empty() {
        bail!("missing answer: --user (at least one user who logs in with a password)");
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
            if s.is_empty() {
                old.secret_access_key.map(|s| s.0)
            } else {
                Some(s)
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
