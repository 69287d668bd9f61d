//! Client helpers for a workstation: `login` (credentials in Docker's `config.json`, checked
//! against the registry first), `list-tags` (every `repo:tag`, following pagination) and
//! `delete-tags` (pick images, confirm, delete by digest). They speak the registry's HTTP API,
//! so they work against any registry, this one or another: with HTTP Basic, or, when the
//! registry answers with a Bearer challenge, with tokens fetched from its realm with the same
//! credentials (the Docker token protocol), one per scope.

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

/// A Bearer challenge's parameters (`realm`, `service`, `scope`), if `header` is one.
fn bearer_challenge(header: &str) -> Option<BTreeMap<String, String>> {
    let rest = header.trim();
    let rest = rest
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| &rest[7..])?;
    let mut params = BTreeMap::new();
    let mut s = rest.trim_start();
    while let Some((key, after)) = s.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            },
        };
        params.insert(key, value.to_owned());
        s = next.trim_start_matches([',', ' ']);
    }
    params.contains_key("realm").then_some(params)
}

/// Asks a token service for a token: `Ok(None)` when it refuses the credentials.
async fn fetch_token(
    http: &Client,
    challenge: &BTreeMap<String, String>,
    credentials: Option<&(String, String)>,
) -> anyhow::Result<Option<String>> {
    let realm = &challenge["realm"];
    let mut query: Vec<(&str, &str)> = Vec::new();
    for key in ["service", "scope"] {
        if let Some(v) = challenge.get(key) {
            query.push((key, v));
        }
    }
    let mut r = http.get(realm).query(&query);
    if let Some((u, p)) = credentials {
        r = r.basic_auth(u, Some(p));
    }
    let r = r
        .send()
        .await
        .with_context(|| format!("cannot reach the token service {realm}"))?;
    match r.status() {
        s if s.is_success() => {}
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Ok(None),
        s => bail!("the token service {realm} answered {s}"),
    }
    let body: serde_json::Value = r
        .json()
        .await
        .with_context(|| format!("the token service {realm} answered without JSON"))?;
    let token = body["token"]
        .as_str()
        .or_else(|| body["access_token"].as_str())
        .with_context(|| format!("the token service {realm} gave no token"))?;
    Ok(Some(token.to_owned()))
}

/// A connection to a registry with credentials.
struct Session {
    http: Client,
    base: String,
    credentials: Option<(String, String)>,
    /// Bearer tokens by the scope they were fetched for.
    tokens: std::sync::Mutex<BTreeMap<String, String>>,
}

impl Session {
    fn open(t: &Target) -> anyhow::Result<Session> {
        Ok(Session {
            http: t.client()?,
            base: t.base(),
            credentials: stored_credentials(&t.host)?,
            tokens: Default::default(),
        })
    }

    /// Sends a request without a body: with Basic credentials (or a token already fetched
    /// for the scope the last challenge named), and once more with a fresh token when the
    /// registry answers a Bearer challenge.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
    ) -> anyhow::Result<reqwest::Response> {
        let build = |token: Option<&str>| {
            let mut r = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(a) = accept {
                r = r.header(reqwest::header::ACCEPT, a);
            }
            match (token, &self.credentials) {
                (Some(t), _) => r.bearer_auth(t),
                (None, Some((u, p))) => r.basic_auth(u, Some(p)),
                (None, None) => r,
            }
        };
        let r = build(None).send().await?;
        if r.status() != StatusCode::UNAUTHORIZED {
            return Ok(r);
        }
        let Some(challenge) = r
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_challenge)
        else {
            return Ok(r);
        };
        let scope = challenge.get("scope").cloned().unwrap_or_default();
        let known = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&scope)
            .cloned();
        let token = match known {
            Some(t) => t,
            None => match fetch_token(&self.http, &challenge, self.credentials.as_ref()).await? {
                Some(t) => t,
                None => return Ok(r),
            },
        };
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(scope, token.clone());
        Ok(build(Some(&token)).send().await?)
    }

    /// GETs JSON, following the `Link` header's `next` pages; calls `each` per page.
    async fn pages(
        &self,
        first: String,
        mut each: impl FnMut(serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let r = self.send(reqwest::Method::GET, &path, None).await?;
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
    let refused = || anyhow::anyhow!("login to {} refused: wrong user name or password", t.host);
    match r.status() {
        s if s.is_success() => {}
        StatusCode::UNAUTHORIZED => {
            // Token authentication: the credentials are good if the token service takes them.
            let challenge = r
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_challenge)
                .ok_or_else(refused)?;
            let credentials = (user.to_owned(), password.to_owned());
            fetch_token(&http, &challenge, Some(&credentials))
                .await?
                .ok_or_else(refused)?;
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
        let r = s.send(reqwest::Method::HEAD, &path, Some(&accept)).await?;
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
        let r = s.send(reqwest::Method::DELETE, &path, None).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        let c = bearer_challenge(
            r#"Bearer realm="https://r.example/auth/token",service="r.example",scope="repository:a/b:pull,push",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "https://r.example/auth/token");
        assert_eq!(c["service"], "r.example");
        assert_eq!(c["scope"], "repository:a/b:pull,push");
        assert_eq!(c["error"], "insufficient_scope");
        let c = bearer_challenge("bearer realm=https://x/t, service=x").unwrap();
        assert_eq!(
            (c["realm"].as_str(), c["service"].as_str()),
            ("https://x/t", "x")
        );
        assert!(bearer_challenge("Basic realm=\"Registry\"").is_none());
        assert!(bearer_challenge("Bearer service=\"no realm\"").is_none());
        assert!(bearer_challenge("Bearer realm=\"unterminated").is_none());
        assert!(bearer_challenge("").is_none());
    }
}
