//! The client of one upstream registry: manifests, blobs and tags by the Distribution API, with
//! HTTP Basic credentials or the Docker token flow (a `Bearer` challenge names a realm that
//! hands out a token per repository scope; tokens are kept until they expire). Every call is
//! bounded in time; credentials never travel in URLs, so no error or log line shows them, and
//! a redirect to another host is followed without them (reqwest drops `Authorization` when
//! the host changes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use registry_core::manifest::MANIFEST_TYPES;
use registry_core::{Digest, Error, Result};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};

/// A user name and password for an upstream.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password (or access token).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn basic(&self) -> HeaderValue {
        use base64::Engine;
        let raw = format!("{}:{}", self.username, self.password);
        let text = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        let mut value = HeaderValue::from_str(&text).expect("base64 is a valid header value");
        value.set_sensitive(true);
        value
    }
}

/// What a manifest HEAD told.
#[derive(Debug, Clone)]
pub(crate) struct ManifestHead {
    /// `Docker-Content-Digest`, when the upstream sent one.
    pub digest: Option<Digest>,
}

/// A fetched manifest.
#[derive(Debug)]
pub(crate) struct FetchedManifest {
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
/// How long a token lives when its realm does not say (the protocol's default).
const TOKEN_DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The most tokens kept (one per repository pulled recently).
const MAX_TOKENS: usize = 4096;

/// One upstream registry.
pub(crate) struct Upstream {
    /// `scheme://host[:port]`, no trailing slash.
    base: String,
    /// What log lines and metrics call it.
    pub(crate) host: String,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    /// Bearer tokens by scope, with when they stop being used.
    tokens: Mutex<HashMap<String, (HeaderValue, Instant)>>,
    /// Whether the upstream asked for Bearer tokens (then Basic is sent only to its realm).
    bearer: std::sync::atomic::AtomicBool,
    /// How long a connection, an answer's headers, or any read of a body may take.
    timeout: Duration,
}

impl Upstream {
    pub(crate) fn new(
        url: &str,
        credentials: Option<Credentials>,
        timeout: Duration,
        roots: Option<&[u8]>,
    ) -> Result<Upstream> {
        let (base, host) = address(url)?;
        let roots = roots.map(parse_roots).transpose()?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .user_agent(concat!("registry/", env!("CARGO_PKG_VERSION")));
        if let Some(roots) = roots {
            builder = builder.tls_certs_merge(roots);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(Upstream {
            base,
            host,
            http,
            credentials,
            tokens: Mutex::new(HashMap::new()),
            bearer: std::sync::atomic::AtomicBool::new(false),
            timeout,
        })
    }

    /// HEAD of a manifest by tag or digest; `None` when the upstream does not have it.
    pub(crate) async fn manifest_head(
        &self,
        name: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.base);
        let Some(r) = self.send(Method::HEAD, &url, name, true).await? else {
            return Ok(None);
        };
        let digest = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Some(ManifestHead { digest }))
    }

    /// A manifest by tag or digest, at most `max` bytes; `None` when the upstream does not
    /// have it.
    pub(crate) async fn manifest_get(
        &self,
        name: &str,
        reference: &str,
        max: usize,
    ) -> Result<Option<FetchedManifest>> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.base);
        let Some(r) = self.send(Method::GET, &url, name, true).await? else {
            return Ok(None);
        };
        let content_type = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let declared = declared_length(&r);
        if declared.is_some_and(|n| n > max as u64) {
            return Err(self.bad(format!(
                "manifest {name}:{reference} is larger than {max} bytes"
            )));
        }
        let mut body = BytesMut::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = self.within(stream.next()).await? {
            let chunk = chunk.map_err(|e| self.unavailable(&e))?;
            if body.len() + chunk.len() > max {
                return Err(self.bad(format!(
                    "manifest {name}:{reference} is larger than {max} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if declared.is_some_and(|n| n != body.len() as u64) {
            return Err(self.bad(format!(
                "manifest {name}:{reference} was cut short ({} of {} bytes)",
                body.len(),
                declared.unwrap_or_default()
            )));
        }
        Ok(Some(FetchedManifest {
            content_type,
            bytes: body.freeze(),
        }))
    }

    /// A blob's size; `None` when the upstream does not have it.
    pub(crate) async fn blob_head(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.base);
        let Some(r) = self.send(Method::HEAD, &url, name, false).await? else {
            return Ok(None);
        };
        match declared_length(&r) {
            Some(n) => Ok(Some(n)),
            None => Err(self.bad(format!("blob {digest}: HEAD without Content-Length"))),
        }
    }

    /// A blob's bytes as a response whose body is still to be read (redirects to a storage
    /// service are followed); `None` when the upstream does not have it.
    pub(crate) async fn blob_get(&self, name: &str, digest: &Digest) -> Result<Option<Response>> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.base);
        self.send(Method::GET, &url, name, false).await
    }

    /// One page of a repository's tags; `None` when the upstream does not know the repository.
    pub(crate) async fn tags(
        &self,
        name: &str,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<Option<(Vec<String>, bool)>> {
        let mut url = reqwest::Url::parse(&format!("{}/v2/{name}/tags/list", self.base))
            .map_err(|e| self.bad(format!("tags URL: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(n) = n {
                query.append_pair("n", &n.to_string());
            }
            if let Some(last) = last {
                query.append_pair("last", last);
            }
        }
        let Some(r) = self.send(Method::GET, url.as_str(), name, false).await? else {
            return Ok(None);
        };
        let more = r.headers().contains_key("link");
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let body = tokio::time::timeout(self.timeout, r.bytes())
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.unavailable(&e))?;
        if body.len() > 16 * 1024 * 1024 {
            return Err(self.bad(format!("tag list of {name} is larger than 16 MiB")));
        }
        let list: TagList = serde_json::from_slice(&body)
            .map_err(|e| self.bad(format!("tag list of {name}: {e}")))?;
        Ok(Some((list.tags.unwrap_or_default(), more)))
    }

    /// Sends a request, authenticating as the upstream asks; `None` for a 404.
    async fn send(
        &self,
        method: Method,
        url: &str,
        name: &str,
        manifest: bool,
    ) -> Result<Option<Response>> {
        let scope = format!("repository:{name}:pull");
        let mut authorization = self.authorization(&scope);
        let mut retried = false;
        loop {
            let mut request = self.http.request(method.clone(), url);
            if manifest {
                request = request.header(ACCEPT, MANIFEST_TYPES.join(", "));
            }
            if let Some(a) = &authorization {
                request = request.header(AUTHORIZATION, a.clone());
            }
            let response = tokio::time::timeout(self.timeout, request.send())
                .await
                .map_err(|_| self.timed_out())?
                .map_err(|e| self.unavailable(&e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                if let Some(a) = self.answer_challenge(&response, &scope).await? {
                    authorization = Some(a);
                    continue;
                }
            }
            return match status {
                s if s.is_success() => Ok(Some(response)),
                StatusCode::NOT_FOUND => Ok(None),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.bad(format!(
                    "refused access to {name} ({status}){}",
                    if self.credentials.is_some() {
                        ""
                    } else {
                        "; it may need credentials"
                    }
                ))),
                StatusCode::TOO_MANY_REQUESTS => Err(Error::UpstreamUnavailable(format!(
                    "{} is rate limiting this registry (429)",
                    self.host
                ))),
                s if s.is_server_error() => Err(Error::UpstreamUnavailable(format!(
                    "{} answered {status}",
                    self.host
                ))),
                _ => Err(self.bad(format!("answered {status}"))),
            };
        }
    }

    /// What to send first: a token kept for the scope, or Basic credentials unless the
    /// upstream asks for tokens.
    fn authorization(&self, scope: &str) -> Option<HeaderValue> {
        let tokens = self.tokens.lock().expect("not poisoned");
        if let Some((token, until)) = tokens.get(scope) {
            if Instant::now() < *until {
                return Some(token.clone());
            }
        }
        drop(tokens);
        let bearer = self.bearer.load(std::sync::atomic::Ordering::Relaxed);
        match &self.credentials {
            Some(c) if !bearer => Some(c.basic()),
            _ => None,
        }
    }

    /// The authorization a 401 asks for, if this client can give one.
    async fn answer_challenge(
        &self,
        response: &Response,
        scope: &str,
    ) -> Result<Option<HeaderValue>> {
        let challenges: Vec<Challenge> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(Challenge::parse)
            .collect();
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            self.bearer
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return self.fetch_token(c, scope).await.map(Some);
        }
        let basic = challenges.iter().any(|c| c.scheme == "basic");
        Ok(match &self.credentials {
            Some(c) if basic => Some(c.basic()),
            _ => None,
        })
    }

    /// A token from the realm a Bearer challenge names, kept for `scope`.
    async fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<HeaderValue> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| self.bad("Bearer challenge without a realm".to_owned()))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| self.bad(format!("token realm {realm:?}: {e}")))?;
        // Credentials go to a realm over HTTPS, or over HTTP only when the upstream itself
        // is plain HTTP (a registry on a private network).
        let plain_ok = self.base.starts_with("http://");
        match url.scheme() {
            "https" => {}
            "http" if plain_ok => {}
            _ => return Err(self.bad(format!("token realm {realm:?} is not HTTPS"))),
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.http.get(url);
        if let Some(c) = &self.credentials {
            request = request.header(AUTHORIZATION, c.basic());
        }
        let response = tokio::time::timeout(self.timeout, request.send())
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.unavailable(&e))?;
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::UpstreamUnavailable(format!(
                "the token service of {} answered {status}",
                self.host
            )));
        }
        if !status.is_success() {
            return Err(self.bad(format!(
                "its token service refused a token for {scope} ({status})"
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = tokio::time::timeout(self.timeout, response.bytes())
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.unavailable(&e))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| self.bad(format!("token service answer: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.bad("token service answered no token".to_owned()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| self.bad("token service answered an unusable token".to_owned()))?;
        value.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map_or(TOKEN_DEFAULT_LIFETIME, Duration::from_secs);
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        let mut tokens = self.tokens.lock().expect("not poisoned");
        if tokens.len() >= MAX_TOKENS {
            let now = Instant::now();
            tokens.retain(|_, (_, until)| *until > now);
            if tokens.len() >= MAX_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(scope.to_owned(), (value.clone(), until));
        Ok(value)
    }

    /// Waits for `next` (a read of a body) at most the timeout. (reqwest's own read timeout
    /// also counts the time a reader takes between reads, so a fetch held back by a slow
    /// storage would be cut off.)
    pub(crate) async fn within<T>(&self, next: impl std::future::Future<Output = T>) -> Result<T> {
        tokio::time::timeout(self.timeout, next)
            .await
            .map_err(|_| self.timed_out())
    }

    pub(crate) fn unavailable(&self, e: &reqwest::Error) -> Error {
        // reqwest's message names the URL, which never holds credentials.
        Error::UpstreamUnavailable(format!("{}: {}", self.host, error_chain(e)))
    }

    pub(crate) fn timed_out(&self) -> Error {
        Error::UpstreamUnavailable(format!(
            "{} did not answer within {:?}",
            self.host, self.timeout
        ))
    }

    pub(crate) fn bad(&self, message: String) -> Error {
        Error::Upstream(format!("{}: {message}", self.host))
    }
}

/// The `scheme://host[:port]` of an upstream URL and its `host[:port]`. Errors never echo the
/// URL as given: it might hold a password.
pub(crate) fn address(url: &str) -> Result<(String, String)> {
    let mut parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::Config(format!("the upstream URL is not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_password(None);
        let _ = parsed.set_username("");
        return Err(Error::Config(format!(
            "upstream URL {parsed}: give credentials as username and password, not in the URL"
        )));
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "upstream URL {parsed} must be http:// or https://"
        )));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(Error::Config(format!(
            "upstream URL {parsed}: give the registry's address alone (its API is at /v2/)"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::Config(format!("upstream URL {parsed} has no host")))?;
    let host = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let base = format!("{}://{host}", parsed.scheme());
    Ok((base, host))
}

/// The certificates of a PEM bundle.
pub(crate) fn parse_roots(pem: &[u8]) -> Result<Vec<reqwest::Certificate>> {
    reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| Error::Config(format!("upstream CA bundle: {e}")))
}

/// `Content-Length` of an answer, as sent (reqwest's `content_length` is the body's size
/// hint, which is 0 for a HEAD).
pub(crate) fn declared_length(r: &Response) -> Option<u64> {
    r.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// An error with its causes, which for reqwest say what actually failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        cause = c.source();
    }
    text
}

/// One challenge of a `WWW-Authenticate` header (RFC 9110 §11.6.1): a scheme and its
/// parameters. Registries send one challenge per header.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    /// Lower case.
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, mut rest) = match header.find(' ') {
            Some(i) => (&header[..i], header[i..].trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        while !rest.is_empty() {
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_ascii_lowercase();
            rest = rest[eq + 1..].trim_start();
            let value;
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut text = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => text.push(chars.next()?.1),
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        c => text.push(c),
                    }
                }
                rest = &quoted[end? + 1..];
                value = text;
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim().to_owned();
                rest = &rest[end..];
            }
            params.push((key, value));
            rest = rest.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/alpine:pull"));

        let c = Challenge::parse(r#"Basic realm="Registry \"x\"", charset=UTF-8"#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some(r#"Registry "x""#));
        assert_eq!(c.param("charset"), Some("UTF-8"));

        assert_eq!(Challenge::parse("Basic").unwrap().params, vec![]);
        // Malformed: no panic, no challenge.
        for bad in [
            "",
            "Bearer realm",
            r#"Bearer realm="open"#,
            r#"Bearer realm="\"#,
        ] {
            assert_eq!(Challenge::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_refused() {
        let t = Duration::from_secs(1);
        for bad in [
            "https://ann:secret@registry.example.com",
            "ftp://registry.example.com",
            "registry.example.com",
            "https://registry.example.com/v2/",
        ] {
            let e = Upstream::new(bad, None, t, None).err().unwrap();
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        let u = Upstream::new("https://registry.example.com:8443/", None, t, None).unwrap();
        assert_eq!(u.base, "https://registry.example.com:8443");
        assert_eq!(u.host, "registry.example.com:8443");
    }

    #[test]
    fn credentials_do_not_debug_print_the_password() {
        let c = Credentials {
            username: "ann".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
