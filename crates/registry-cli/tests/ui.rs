//! End-to-end tests of the web interface over real sockets: pages show what the API holds
//! (repositories with search and paging, tags, an image's config, layers, platforms and
//! referrers), text from pushers is escaped, deletion needs the form's CSRF token and then
//! agrees with the API, and every page enforces the guard as the API does (sign-in with the
//! htpasswd users, access rules, sessions ended by signing out or forged).

mod common;

use std::collections::BTreeMap;

use common::pki::{Ca, Validity};
use common::{bcrypt_user, data, sha256, Server};
use reqwest::{Client, StatusCode};
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A browser without JavaScript: keeps cookies, follows no redirects.
struct Browser {
    http: Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

/// A page as the browser got it.
struct Got {
    status: StatusCode,
    location: Option<String>,
    set_cookies: Vec<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browser {
    fn new(base: &str) -> Browser {
        Browser::with(Client::builder(), base)
    }

    /// A browser whose HTTP client is `builder` (TLS settings, a client certificate).
    fn with(builder: reqwest::ClientBuilder, base: &str) -> Browser {
        Browser {
            http: builder
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    async fn send(&mut self, rb: reqwest::RequestBuilder) -> Got {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let rb = if cookie.is_empty() {
            rb
        } else {
            rb.header("cookie", cookie.join("; "))
        };
        let r = rb.send().await.unwrap();
        let headers = r.headers().clone();
        let set_cookies: Vec<String> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        Got {
            status: r.status(),
            location: headers
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            set_cookies,
            headers,
            body: r.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Got {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(url)).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Got {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let url = format!("{}{path}", self.base);
        let rb = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(rb).await
    }
}

/// A browser signed in with the form as `user`.
async fn signed_in(base: &str, user: &str, password: &str) -> Browser {
    let mut b = Browser::new(base);
    let form = b.get("/ui/login").await;
    let token = csrf(&form.body);
    let fields = [
        ("user", user),
        ("password", password),
        ("csrf", token.as_str()),
    ];
    assert_eq!(
        b.post("/ui/login", &fields).await.status,
        StatusCode::SEE_OTHER
    );
    b
}

/// The value of the hidden `csrf` field of a page's form.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Pushes blobs and a manifest with raw HTTP (Basic credentials if given); returns the
/// manifest's digest.
async fn push(
    http: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    blobs: &[&[u8]],
    (media_type, manifest): (&str, &serde_json::Value),
    creds: Option<(&str, &str)>,
) -> String {
    let auth = |rb: reqwest::RequestBuilder| match creds {
        Some((u, p)) => rb.basic_auth(u, Some(p)),
        None => rb,
    };
    for blob in blobs {
        let d = sha256(blob);
        let r = auth(http.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "blob into {repo}");
    }
    let bytes = serde_json::to_vec(manifest).unwrap();
    let r = auth(http.put(format!("{base}/v2/{repo}/manifests/{reference}")))
        .header("content-type", media_type)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "manifest into {repo}");
    sha256(&bytes)
}

/// A one-layer image whose config carries `labels`; returns the manifest's digest.
async fn push_image(
    http: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
    creds: Option<(&str, &str)>,
) -> String {
    let layer = data(5000, repo.len() as u64 + tag.len() as u64);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2026-11-30T12:00:00Z",
        "config": {"Env": ["PATH=/usr/bin", "MODE=<b>bold</b>"], "Entrypoint": ["/bin/app"],
                   "Labels": labels},
        "history": [{"created": "2026-11-30T12:00:00Z", "created_by": "COPY app /bin/app"}],
    }))
    .unwrap();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
        "annotations": annotations,
    });
    push(
        http,
        base,
        repo,
        tag,
        &[&layer, &config],
        (OCI_MANIFEST, &manifest),
        creds,
    )
    .await
}

/// ann may pull, push and delete team-a/**; bob may pull and push team-b/**.
const TEAMS: &str = r#"[[access]]
users = ["ann"]
repositories = ["team-a/**"]
actions = ["pull", "push", "delete"]

[[access]]
users = ["bob"]
repositories = ["team-b/**"]
actions = ["pull", "push"]
"#;

/// A configuration in `dir` with the htpasswd users ann (ann-secret) and bob (bob-secret),
/// then `rest`; returns its path.
fn ann_and_bob(dir: &std::path::Path, rest: &str) -> std::path::PathBuf {
    let htpasswd = bcrypt_user(dir, "ann", "ann-secret");
    let bob = bcrypt::hash("bob-secret", 4).unwrap();
    let mut users = std::fs::read_to_string(&htpasswd).unwrap();
    users.push_str(&format!("bob:{bob}\n"));
    std::fs::write(&htpasswd, users).unwrap();
    let cfg = dir.join("registry.toml");
    std::fs::write(&cfg, format!("[auth]\nhtpasswd = {htpasswd:?}\n\n{rest}")).unwrap();
    cfg
}

fn assert_secure_page(got: &Got) {
    let csp = got.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(got.headers["x-frame-options"], "DENY");
    assert_eq!(got.headers["cache-control"], "no-store");
    assert!(got.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
}

#[tokio::test]
async fn pages_show_what_the_api_holds_and_escape_it() {
    let server = Server::start(&[]);
    let base = server.url();
    let http = Client::new();
    let evil = "<script>alert(1)</script>";
    let image = push_image(
        &http,
        &base,
        "shop/web",
        "v1",
        json!({"org.opencontainers.image.title": evil, "maintainer": "ops@example.com"}),
        json!({"note": "<img src=x onerror=alert(2)>"}),
        None,
    )
    .await;
    push_image(&http, &base, "shop/web", "v2", json!({}), json!({}), None).await;
    // An index of two platforms (children pushed by digest), and a signature of the image.
    let arm = push_image(
        &http,
        &base,
        "shop/multi",
        "arm",
        json!({}),
        json!({}),
        None,
    )
    .await;
    let amd = push_image(
        &http,
        &base,
        "shop/multi",
        "amd",
        json!({}),
        json!({}),
        None,
    )
    .await;
    let index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": arm, "size": 500, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": amd, "size": 500, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    push(
        &http,
        &base,
        "shop/multi",
        "latest",
        &[],
        (OCI_INDEX, &index),
        None,
    )
    .await;
    let empty = b"{}".to_vec();
    let signature = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(&empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(&empty), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": 1},
    });
    let sig = sha256(&serde_json::to_vec(&signature).unwrap());
    push(
        &http,
        &base,
        "shop/web",
        &sig,
        &[&empty],
        (OCI_MANIFEST, &signature),
        None,
    )
    .await;

    let mut browser = Browser::new(&base);
    let list = browser.get("/").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_secure_page(&list);
    assert!(list
        .set_cookies
        .iter()
        .any(|c| c.starts_with("registry_ui_browser=")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Strict")));
    assert!(
        list.body.contains("href=\"/ui/repo/shop/web\""),
        "{}",
        list.body
    );
    assert!(list.body.contains("href=\"/ui/repo/shop/multi\""));
    let searched = browser.get("/?q=multi").await;
    assert!(searched.body.contains("shop/multi"));
    assert!(!searched.body.contains("shop/web"));

    // The repository: tags with digest and size; the pull command names the host.
    let repo = browser.get("/ui/repo/shop/web").await;
    assert_eq!(repo.status, StatusCode::OK);
    assert!(
        repo.body.contains("href=\"/ui/image/shop/web:v1\""),
        "{}",
        repo.body
    );
    assert!(repo.body.contains(&image[7..19]), "short digest of v1");
    assert!(
        repo.body.contains("2026-11-30 12:00 UTC"),
        "created, from the config"
    );
    assert!(repo
        .body
        .contains(&format!("docker pull {}/shop/web", server.addr)));
    let multi = browser.get("/ui/repo/shop/multi").await;
    assert!(
        multi.body.contains("linux/arm64/v8, linux/amd64"),
        "{}",
        multi.body
    );

    // The image: config, layers, labels and annotations escaped, referrers by type.
    let page = browser.get("/ui/image/shop/web:v1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .body
        .contains(&format!("docker pull {}/shop/web:v1", server.addr)));
    assert!(page
        .body
        .contains(&format!("docker pull {}/shop/web@{image}", server.addr)));
    assert!(page.body.contains("/bin/app"));
    assert!(page.body.contains("COPY app /bin/app"));
    assert!(page.body.contains("ops@example.com"));
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(page.body.contains("MODE=&lt;b&gt;bold&lt;/b&gt;"));
    assert!(!page.body.contains(evil) && !page.body.contains("<img src=x"));
    assert!(page
        .body
        .contains("application/vnd.dev.cosign.artifact.sig.v1+json"));
    assert!(page.body.contains(&format!("/ui/image/shop/web@{sig}")));
    let index_page = browser.get("/ui/image/shop/multi:latest").await;
    assert!(index_page.body.contains("linux/arm64/v8"));
    assert!(index_page
        .body
        .contains(&format!("/ui/image/shop/multi@{arm}")));
    // What does not exist is a 404 page.
    for missing in [
        "/ui/repo/shop/none",
        "/ui/image/shop/web:v9",
        "/ui/image/Bad:x",
    ] {
        assert_eq!(
            browser.get(missing).await.status,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }

    // Deleting a tag: the confirmation form carries the token; without it nothing happens.
    let confirm = browser.get("/ui/delete?repo=shop/web&reference=v2").await;
    assert_eq!(confirm.status, StatusCode::OK);
    let token = csrf(&confirm.body);
    let fields = [("repo", "shop/web"), ("reference", "v2")];
    let refused = browser.post("/ui/delete", &fields).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let wrong = [("repo", "shop/web"), ("reference", "v2"), ("csrf", "0123")];
    assert_eq!(
        browser.post("/ui/delete", &wrong).await.status,
        StatusCode::FORBIDDEN
    );
    let mut stranger = Browser::new(&base);
    let with_token = [
        ("repo", "shop/web"),
        ("reference", "v2"),
        ("csrf", token.as_str()),
    ];
    assert_eq!(
        stranger.post("/ui/delete", &with_token).await.status,
        StatusCode::FORBIDDEN,
        "another browser's token"
    );
    let tags = |http: Client| {
        let base = base.clone();
        async move {
            let r = http
                .get(format!("{base}/v2/shop/web/tags/list"))
                .send()
                .await
                .unwrap();
            r.json::<serde_json::Value>().await.unwrap()["tags"].clone()
        }
    };
    assert_eq!(tags(http.clone()).await, json!(["v1", "v2"]));
    let deleted = browser.post("/ui/delete", &with_token).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert_eq!(
        deleted.location.as_deref(),
        Some("/ui/repo/shop/web?deleted=v2")
    );
    let listed = tags(http.clone()).await;
    assert!(
        !listed.as_array().unwrap().contains(&json!("v2")),
        "{listed}"
    );
    assert!(listed.as_array().unwrap().contains(&json!("v1")));
    let after = browser.get("/ui/repo/shop/web?deleted=v2").await;
    assert!(after.body.contains("Deleted <code>v2</code>"));
    assert!(!after.body.contains("href=\"/ui/image/shop/web:v2\""));
}

#[tokio::test]
async fn repository_list_pages_through_many() {
    let server = Server::start(&[]);
    let base = server.url();
    let http = Client::new();
    for i in 0..57 {
        push_image(
            &http,
            &base,
            &format!("many/r{i:02}"),
            "v1",
            json!({}),
            json!({}),
            None,
        )
        .await;
    }
    let mut browser = Browser::new(&base);
    let first = browser.get("/").await;
    let rows = |body: &str| body.matches("<tr data-name=").count();
    assert_eq!(rows(&first.body), 50);
    assert!(
        first.body.contains("href=\"/?q=&amp;after=many%2Fr49\""),
        "{}",
        first.body
    );
    let second = browser.get("/?q=&after=many%2Fr49").await;
    assert_eq!(rows(&second.body), 7);
    assert!(second.body.contains("many/r56") && !second.body.contains("many/r49<"));
}

#[tokio::test]
async fn pages_enforce_the_guard_as_the_api_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ann_and_bob(dir.path(), TEAMS);
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    let ann = Some(("ann", "ann-secret"));
    let bobs = Some(("bob", "bob-secret"));
    push_image(&http, &base, "team-a/app", "v1", json!({}), json!({}), ann).await;
    push_image(&http, &base, "team-b/app", "v1", json!({}), json!({}), bobs).await;
    push_image(&http, &base, "team-b/app", "v2", json!({}), json!({}), bobs).await;

    // Anonymous visitors are sent to sign in, from every page.
    let mut browser = Browser::new(&base);
    for path in ["/", "/ui/repo/team-a/app", "/ui/image/team-a/app:v1"] {
        let got = browser.get(path).await;
        assert_eq!(got.status, StatusCode::SEE_OTHER, "{path}");
        assert!(got
            .location
            .as_deref()
            .unwrap()
            .starts_with("/ui/login?next="));
    }
    let form = browser.get("/ui/login?next=/ui/repo/team-a/app").await;
    assert_eq!(form.status, StatusCode::OK);
    let token = csrf(&form.body);
    // No token, a wrong password: no session.
    let no_token = [("user", "ann"), ("password", "ann-secret")];
    assert_eq!(
        browser.post("/ui/login", &no_token).await.status,
        StatusCode::FORBIDDEN
    );
    let wrong = [
        ("user", "ann"),
        ("password", "nope"),
        ("csrf", token.as_str()),
    ];
    let failed = browser.post("/ui/login", &wrong).await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    assert!(failed.body.contains("Wrong name or password"));
    assert!(!browser.cookies.contains_key("registry_ui_session"));
    let right = [
        ("user", "ann"),
        ("password", "ann-secret"),
        ("csrf", token.as_str()),
        ("next", "/ui/repo/team-a/app"),
    ];
    let answer = browser.post("/ui/login", &right).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location.as_deref(), Some("/ui/repo/team-a/app"));
    let session = answer
        .set_cookies
        .iter()
        .find(|c| c.starts_with("registry_ui_session="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("ann-secret"));

    // Ann sees her repository and may delete in it; team-b is neither listed nor shown.
    let list = browser.get("/").await;
    assert!(list.body.contains("Signed in as <strong>ann</strong>"));
    assert!(
        list.body.contains("team-a/app") && !list.body.contains("team-b"),
        "{}",
        list.body
    );
    assert!(browser
        .get("/ui/repo/team-a/app")
        .await
        .body
        .contains("/ui/delete?"));
    for path in [
        "/ui/repo/team-b/app",
        "/ui/image/team-b/app:v1",
        "/ui/delete?repo=team-b/app&reference=v1",
    ] {
        assert_eq!(
            browser.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }

    // Bob may pull team-b but not delete there: no delete link, and the form is refused.
    let mut bob_browser = signed_in(&base, "bob", "bob-secret").await;
    let repo = bob_browser.get("/ui/repo/team-b/app").await;
    assert!(repo.body.contains("v2") && !repo.body.contains("/ui/delete?"));
    let page = bob_browser.get("/").await;
    let fields = [
        ("repo", "team-b/app"),
        ("reference", "v2"),
        ("csrf", &csrf(&page.body)),
    ];
    assert_eq!(
        bob_browser.post("/ui/delete", &fields).await.status,
        StatusCode::FORBIDDEN
    );
    let r = http
        .get(format!("{base}/v2/team-b/app/manifests/v2"))
        .header("accept", OCI_MANIFEST)
        .basic_auth("bob", Some("bob-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "still there");

    // A forged session is no session.
    let mut forger = Browser::new(&base);
    let value = session
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1;
    let (body, tag) = value.split_once('.').unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value = serde_json::from_slice(&b64.decode(body).unwrap()).unwrap();
    claims["sub"] = json!("bob");
    let forged = format!("{}.{tag}", b64.encode(serde_json::to_vec(&claims).unwrap()));
    forger.cookies.insert("registry_ui_session".into(), forged);
    assert_eq!(forger.get("/").await.status, StatusCode::SEE_OTHER);

    // Signing out ends the session, even for a copy of its cookie.
    let stolen = browser.cookies["registry_ui_session"].clone();
    let page = browser.get("/").await;
    let out = browser
        .post("/ui/logout", &[("csrf", &csrf(&page.body))])
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(!browser.cookies.contains_key("registry_ui_session"));
    assert_eq!(browser.get("/").await.status, StatusCode::SEE_OTHER);
    let mut thief = Browser::new(&base);
    thief.cookies.insert("registry_ui_session".into(), stolen);
    assert_eq!(thief.get("/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_interface_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(&cfg, "[ui]\nenabled = false\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let r = Client::new().get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NOT_FOUND");
}

/// Where the browser test saves its screenshots: `$REGISTRY_UI_SCREENSHOTS`, else
/// `ui-screenshots` in the cargo target directory (CI keeps it as an artifact).
fn screenshot_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("REGISTRY_UI_SCREENSHOTS") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("ui-screenshots")
}

/// A person in a real browser (chromium, driven by Selenium from Python): signs in, finds an
/// image, reads it, copies its pull command, deletes an old tag; pushed markup never runs, a
/// form without its token is refused, another user sees nothing of it. See
/// `tests/clients/ui_browser.py`.
#[tokio::test]
async fn a_browser_signs_in_finds_an_image_and_deletes_a_tag() {
    let chromium = common::require_tool("chromium");
    let chromedriver = common::require_tool("chromedriver");
    let dir = tempfile::tempdir().unwrap();
    let cfg = ann_and_bob(dir.path(), TEAMS);
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    let ann = Some(("ann", "ann-secret"));
    let evil_label = json!({"org.opencontainers.image.description": "<script>window.__xss = 'label'</script>",
                            "org.opencontainers.image.vendor": "Example Ltd"});
    let evil_note = json!({"note": "<img src=x onerror=\"window.__xss = 'annotation'\">"});
    push_image(&http, &base, "team-a/web", "v1", evil_label, evil_note, ann).await;
    push_image(&http, &base, "team-a/web", "old", json!({}), json!({}), ann).await;
    push_image(
        &http,
        &base,
        "team-a/tools",
        "v1",
        json!({}),
        json!({}),
        ann,
    )
    .await;
    let bobs = Some(("bob", "bob-secret"));
    push_image(&http, &base, "team-b/app", "v1", json!({}), json!({}), bobs).await;

    let shots = screenshot_dir();
    let script = std::process::Command::new(common::python())
        .arg(common::client_script("ui_browser.py"))
        .arg(&base)
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .env("CHROMEDRIVER", &chromedriver)
        .env("SE_OFFLINE", "true")
        .output();
    let out = tokio::task::spawn_blocking(move || script.unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("done"), "{stdout}");
    // The API agrees with what the browser did.
    let r = http
        .get(format!("{base}/v2/team-a/web/tags/list"))
        .basic_auth("ann", Some("ann-secret"))
        .send()
        .await
        .unwrap();
    let tags: serde_json::Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["v1"]));
    for page in ["sign-in", "repositories", "repository", "image", "delete"] {
        for theme in ["light", "dark"] {
            let shot = shots.join(format!("{page}-{theme}.png"));
            let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
            assert!(size > 1000, "{} missing or empty", shot.display());
        }
    }
}

/// Administrators see the last collection and fsck and storage per repository, and start a
/// collection; nobody else sees the page.
#[tokio::test]
async fn administrators_see_usage_and_start_a_collection() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ann_and_bob(
        dir.path(),
        "[ui]\nadmins = [\"ann\"]\n\n[gc]\ngrace = \"0s\"\n\n[[access]]\nusers = [\"ann\", \"bob\"]\nrepositories = [\"**\"]\nactions = [\"pull\", \"push\", \"delete\"]\n",
    );
    let audit = dir.path().join("audit.log");
    let server = Server::start_audited(&cfg, &audit);
    let base = server.url();
    let http = Client::new();
    let ann = Some(("ann", "ann-secret"));
    push_image(&http, &base, "big/app", "v1", json!({}), json!({}), ann).await;
    push_image(&http, &base, "small/app", "v1", json!({}), json!({}), ann).await;
    // A deleted image: the collection deletes its links, and its config.
    let gone = push_image(
        &http,
        &base,
        "big/app",
        "gone",
        json!({"x": "y"}),
        json!({}),
        ann,
    )
    .await;
    let r = http
        .delete(format!("{base}/v2/big/app/manifests/{gone}"))
        .basic_auth("ann", Some("ann-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let mut bob_browser = signed_in(&base, "bob", "bob-secret").await;
    assert!(!bob_browser.get("/").await.body.contains("/ui/admin"));
    assert_eq!(
        bob_browser.get("/ui/admin").await.status,
        StatusCode::NOT_FOUND
    );
    let page = bob_browser.get("/").await;
    let fields = [("csrf", csrf(&page.body))];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        bob_browser.post("/ui/admin/gc", &fields).await.status,
        StatusCode::NOT_FOUND
    );
    let mut anonymous = Browser::new(&base);
    assert_eq!(
        anonymous.get("/ui/admin").await.status,
        StatusCode::SEE_OTHER
    );

    let mut admin = signed_in(&base, "ann", "ann-secret").await;
    let page = admin.get("/ui/admin").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("No collection has run yet"),
        "{}",
        page.body
    );
    let token = csrf(&page.body);
    assert_eq!(
        admin.post("/ui/admin/gc", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let started = admin
        .post("/ui/admin/gc", &[("csrf", token.as_str())])
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER);
    assert_eq!(started.location.as_deref(), Some("/ui/admin?started=1"));
    // The collection waits for nodes to see its lease (5 s), then runs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let page = loop {
        let page = admin.get("/ui/admin").await;
        if page.body.contains("Last run") && !page.body.contains("A collection is running") {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "{}", page.body);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    // The audit trail names who started it.
    common::audit_line(&audit, |l| {
        l["action"] == "gc" && l["result"] == "ok" && l["who"] == "user ann"
    })
    .await;
    // (Its layer is small/app:v1's too, and stays.)
    assert!(
        page.body.contains("2 blob links, 1 blob (249 B)"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("<a href=\"/ui/repo/big/app\">big/app</a>"));
    assert!(page
        .body
        .contains("<a href=\"/ui/repo/small/app\">small/app</a>"));
    assert!(page.body.contains("No check has run yet"));

    // fsck's report shows too.
    let home = tempfile::tempdir().unwrap();
    let storage = server.data().display().to_string();
    let out = common::cli::registry(home.path(), &["fsck", "--storage", &storage], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = admin.get("/ui/admin").await;
    assert!(page.body.contains("Consistency check"), "{}", page.body);
    assert!(!page.body.contains("No check has run yet"), "{}", page.body);
    assert!(
        page.body.contains("<dd>0</dd>"),
        "no problems: {}",
        page.body
    );
}

/// Over mutual TLS a client certificate signs its holder in by itself (as on the API), an
/// unauthorized one is refused, and cookies are `Secure`.
#[tokio::test]
async fn client_certificates_sign_in_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ui CA");
    let (cert, key) = ca.server().write(dir.path(), "server.pem", "server.key");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        ca_path.to_str().unwrap(),
        "--client-names",
        "ci.example.com",
    ]);
    let base = format!("https://{}", server.addr);
    let client = |name: &str| {
        Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .identity(ca.client(&[name], name, Validity::Now).identity())
    };
    push_image(
        &client("ci.example.com").build().unwrap(),
        &base,
        "mtls/app",
        "v1",
        json!({}),
        json!({}),
        None,
    )
    .await;
    let mut ci = Browser::with(client("ci.example.com"), &base);
    let list = ci.get("/").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.body
            .contains("Signed in as <strong>ci.example.com</strong>"),
        "{}",
        list.body
    );
    assert!(list.body.contains("mtls/app"));
    assert!(
        !list.set_cookies.is_empty() && list.set_cookies.iter().all(|c| c.contains("; Secure")),
        "{:?}",
        list.set_cookies
    );
    let mut stranger = Browser::with(client("other.example.com"), &base);
    let refused = stranger.get("/").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(!refused.body.contains("mtls/app"));
}

/// The sign-in form is braked like HTTP Basic: after the configured failures even the right
/// password waits, with Retry-After.
#[tokio::test]
async fn the_sign_in_form_is_braked() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = bcrypt_user(dir.path(), "ann", "ann-secret");
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nhtpasswd = {htpasswd:?}\nbrake = {{ attempts = 3, window = \"1m\", pause = \"3s\" }}\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let mut browser = Browser::new(&server.url());
    let form = browser.get("/ui/login").await;
    let token = csrf(&form.body);
    for _ in 0..3 {
        let wrong = [
            ("user", "ann"),
            ("password", "guess"),
            ("csrf", token.as_str()),
        ];
        assert_eq!(
            browser.post("/ui/login", &wrong).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let right = [
        ("user", "ann"),
        ("password", "ann-secret"),
        ("csrf", token.as_str()),
    ];
    let braked = browser.post("/ui/login", &right).await;
    assert_eq!(braked.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(braked.headers.contains_key("retry-after"));
    assert!(!browser.cookies.contains_key("registry_ui_session"));
}
