//! Client helpers for a workstation: `login` (credentials in Docker's `config.json`, checked
//! against the registry first), `list-tags` (every `repo:tag`, following pagination) and
//! `delete-tags` (pick images, confirm, delete by digest). They speak the registry's HTTP API,
//! so they work against any registry, this one or another.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;
use reqwest::{Client, StatusCode};

use crate::instance::write_private;

/// Where and how to reach a registry.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    /// The registry: host[:port], as in image names (registry.example.com/app:tag).
    pub host: String,
    /// Speak plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// Also trust this CA certificate (PEM), e.g. an instance's tls/ca.pem.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Docker's client configuration file: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub(crate) fn docker_config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("config.json"),
        _ => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".docker/config.json")
        }
    }
}

fn read_docker_config(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Default::default()),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a Docker config file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The stored credentials for `host`, if any.
pub(crate) fn stored_credentials(host: &str) -> anyhow::Result<Option<(String, String)>> {
    let config = read_docker_config(&docker_config_path())?;
    let Some(auth) = config
        .get("auths")
        .and_then(|a| a.get(host))
        .and_then(|e| e.get("auth"))
        .and_then(|a| a.as_str())
    else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()
        .and_then(|d| String::from_utf8(d).ok());
    Ok(decoded.and_then(|d| d.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))))
}

impl Target {
    fn base(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }

    fn client(&self) -> anyhow::Result<Client> {
        let mut b = Client::builder().user_agent(concat!("registry/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build().context("cannot set up the HTTP client")
    }
}

/// A connection to a registry with credentials.
struct Session {
    http: Client,
    base: String,
    credentials: Option<(String, String)>,
}

impl Session {
    fn open(t: &Target) -> anyhow::Result<Session> {
        Ok(Session {
            http: t.client()?,
            base: t.base(),
            credentials: stored_credentials(&t.host)?,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.credentials {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// GETs JSON, following the `Link` header's `next` pages; calls `each` per page.
    async fn pages(
        &self,
        first: String,
        mut each: impl FnMut(serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let r = self.request(reqwest::Method::GET, &path).send().await?;
            let r = check(r, &path).await?;
            next = r
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(url, _)| url.to_owned());
            each(
                r.json()
                    .await
                    .with_context(|| format!("GET {path}: not JSON"))?,
            )?;
        }
        Ok(())
    }
}

/// A one-line error for an unsuccessful answer.
async fn check(r: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let status = r.status();
    if status.is_success() {
        return Ok(r);
    }
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let detail = body["errors"][0]["message"]
        .as_str()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match status {
        StatusCode::UNAUTHORIZED => {
            bail!("{what}: 401 unauthorized{detail} (log in with `registry login`)")
        }
        _ => bail!("{what}: {status}{detail}"),
    }
}

/// Checks `user`/`password` against the registry, then stores them in Docker's config.json
/// (other entries kept; mode 0600). Returns the file written.
pub(crate) async fn login(t: &Target, user: &str, password: &str) -> anyhow::Result<PathBuf> {
    let http = t.client()?;
    let url = format!("{}/v2/", t.base());
    let r = http
        .get(&url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    match r.status() {
        s if s.is_success() => {}
        StatusCode::UNAUTHORIZED => {
            bail!("login to {} refused: wrong user name or password", t.host)
        }
        s => bail!("login to {}: {url} answered {s}", t.host),
    }
    let path = docker_config_path();
    let mut config = read_docker_config(&path)?;
    let auths = config
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    let Some(auths) = auths.as_object_mut() else {
        bail!("{}: \"auths\" is not an object", path.display());
    };
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    auths.insert(t.host.clone(), serde_json::json!({ "auth": token }));
    let mut text = serde_json::to_string_pretty(&config)?;
    text.push('\n');
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// Every `repo:tag` of the registry, sorted.
pub(crate) async fn list_tags(t: &Target) -> anyhow::Result<Vec<(String, String)>> {
    let s = Session::open(t)?;
    let mut repos = Vec::new();
    s.pages("/v2/_catalog?n=1000".into(), |page| {
        for r in page["repositories"].as_array().into_iter().flatten() {
            repos.extend(r.as_str().map(str::to_owned));
        }
        Ok(())
    })
    .await?;
    let mut all = Vec::new();
    for repo in repos {
        let mut tags = Vec::new();
        s.pages(format!("/v2/{repo}/tags/list?n=1000"), |page| {
            for t in page["tags"].as_array().into_iter().flatten() {
                tags.extend(t.as_str().map(str::to_owned));
            }
            Ok(())
        })
        .await?;
        all.extend(tags.into_iter().map(|t| (repo.clone(), t)));
    }
    all.sort();
    Ok(all)
}

/// Deletes the manifests `refs` (`repo:tag`) point at, by digest (which removes every tag of
/// that manifest, as the registry API defines). Returns (reference, digest) per deletion.
pub(crate) async fn delete_tags(
    t: &Target,
    refs: &[(String, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    let s = Session::open(t)?;
    let accept = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
    .join(", ");
    let mut digests: BTreeMap<(String, String), String> = BTreeMap::new();
    for (repo, tag) in refs {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let r = s
            .request(reqwest::Method::HEAD, &path)
            .header(reqwest::header::ACCEPT, &accept)
            .send()
            .await?;
        let r = check(r, &format!("{repo}:{tag}")).await?;
        let digest = r
            .headers()
            .get("docker-content-digest")
            .and_then(|d| d.to_str().ok())
            .with_context(|| format!("{repo}:{tag}: the registry gave no Docker-Content-Digest"))?;
        digests.insert((repo.clone(), digest.to_owned()), format!("{repo}:{tag}"));
    }
    let mut done = Vec::new();
    for ((repo, digest), name) in digests {
        let path = format!("/v2/{repo}/manifests/{digest}");
        let r = s.request(reqwest::Method::DELETE, &path).send().await?;
        check(r, &format!("delete {name}")).await?;
        done.push((name, digest));
    }
    Ok(done)
}

/// Parses `repo:tag`.
pub(crate) fn parse_ref(s: &str) -> anyhow::Result<(String, String)> {
    match s.rsplit_once(':') {
        Some((repo, tag)) if !repo.is_empty() && !tag.contains('/') && !tag.is_empty() => {
            Ok((repo.to_owned(), tag.to_owned()))
        }
        _ => bail!("{s:?} is not repository:tag"),
    }
}

/// Lets a person pick among `all` and confirm; `None` when they cancel.
pub(crate) fn pick(all: &[(String, String)]) -> anyhow::Result<Option<Vec<(String, String)>>> {
    if !std::io::stderr().is_terminal() {
        bail!("pick images on a terminal, or name them (repository:tag ...) with --yes");
    }
    let theme = dialoguer::theme::ColorfulTheme::default();
    let items: Vec<String> = all.iter().map(|(r, t)| format!("{r}:{t}")).collect();
    let picked = dialoguer::MultiSelect::with_theme(&theme)
        .with_prompt("Images to delete (space to pick, Enter when done)")
        .items(&items)
        .interact()?;
    if picked.is_empty() {
        return Ok(None);
    }
    let chosen: Vec<_> = picked.iter().map(|&k| all[k].clone()).collect();
    let sure = dialoguer::Confirm::with_theme(&theme)
        .with_prompt(format!(
            "Delete {} image(s)? Every tag of the same manifest goes too",
            chosen.len()
        ))
        .default(false)
        .wait_for_newline(true)
        .interact()?;
    Ok(sure.then_some(chosen))
}
