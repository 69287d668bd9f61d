//! OAuth2 end to end, from `registry config` to `docker push`: a real OpenID Connect provider
//! (the certified `oidc-provider` npm package, tests/fixtures/oidc-provider) on loopback with
//! users and groups; the instance written by the wizard's "Yes, with OAuth2" (non-interactive:
//! the provider, who may enter, a password user for CI, HTTPS from the instance's own CA); the
//! browser flow driven over HTTP (follow the redirects, post the provider's sign-in form, read
//! the token page); then docker and skopeo push with the personal access token, with the rights
//! the person's groups give, and docker with the password user's tokens. Who may enter, a wrong
//! state, a replayed code, the token page's CSRF check, revocation by the owner and an
//! unreachable provider are tested on the same setup.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::cli::{ok, registry_env, serve, Serving};
use common::tools::{run, skopeo, Docker};
use common::{data, free_port, require_tool, tar, write_oci_layout};

/// The provider fixture, stopped when dropped (it also exits when its stdin closes).
struct Provider {
    child: Child,
    url: String,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oidc-provider")
}

impl Provider {
    fn start(redirect_uri: &str) -> Provider {
        let dir = fixture_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the OpenID Connect test provider is not installed: run scripts/install-test-deps.sh"
        );
        let port = free_port();
        let mut child = Command::new(require_tool("node"))
            .arg(dir.join("provider.mjs"))
            .arg(port.to_string())
            .arg(redirect_uri)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the provider did not start");
        Provider {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry instance written by the wizard, signing people in at `provider`: ann
/// (example.com) may enter by domain, bob by group `ops`; group `devs` may push `devs/**`,
/// `ops` may push `ops/**`, the password user ci may push `ci/**`.
struct Setup {
    home: tempfile::TempDir,
    origin: String,
    provider: Provider,
    ca: Vec<u8>,
    _serving: Serving,
}

const CI_PASSWORD: &str = "ci-password-1\n";

impl Setup {
    fn new() -> Setup {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let addr = format!("127.0.0.1:{}", free_port());
        let origin = format!("https://{addr}");
        let provider = Provider::start(&format!("{origin}/auth/callback"));
        let secret = std::ffi::OsString::from("registry-client-secret");
        let out = registry_env(
            h,
            &[
                "config",
                "--non-interactive",
                "--domain",
                "127.0.0.1",
                "--listen",
                &addr,
                "--auth",
                "oauth2",
                "--oidc-issuer",
                &provider.url,
                "--oidc-client-id",
                "registry",
                "--allowed-domains",
                "example.com",
                "--allowed-groups",
                "ops",
                "--user",
                "ci",
                "--password-stdin",
                "--tls",
                "ca",
                "--storage",
                "data",
                "--public-read",
                "false",
                "--ip-allowlist",
                "",
            ],
            Some(CI_PASSWORD),
            &[("REGISTRY_OIDC_CLIENT_SECRET", secret.as_os_str())],
        );
        let told = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{told}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            told.contains(&format!("register the redirect URI {origin}/auth/callback")),
            "{told}"
        );
        let dir = h.join("instances/default");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["oidc-client-secret", "tokens/signing-key.pem"] {
                let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        // Rights by group, as an administrator adds them.
        let mut config = std::fs::read_to_string(dir.join("registry.toml")).unwrap();
        assert!(!config.contains("registry-client-secret"), "{config}");
        config += r#"
[[access]]
users = ["ci"]
repositories = ["ci/**"]
actions = ["pull", "push"]

[[access]]
groups = ["devs"]
repositories = ["devs/**"]
actions = ["pull", "push"]

[[access]]
groups = ["ops"]
repositories = ["ops/**"]
actions = ["pull", "push", "delete"]
"#;
        std::fs::write(dir.join("registry.toml"), config).unwrap();
        let check = ok(h, &["check"], None);
        assert!(
            check.contains(&format!(
                "OpenID Connect sign-in with {} (client \"registry\", scopes openid email profile groups; who: domains example.com; groups ops",
                provider.url
            )),
            "{check}"
        );
        assert!(
            check.contains(&format!("built-in service at {origin}/auth/token")),
            "{check}"
        );
        assert!(!check.contains("registry-client-secret"));
        let serving = serve(h, &addr);
        let ca = std::fs::read(dir.join("tls/ca.pem")).unwrap();
        Setup {
            home,
            origin,
            provider,
            ca,
            _serving: serving,
        }
    }

    /// A browser: trusts the instance's CA, keeps cookies, and lets each redirect be checked.
    fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca).unwrap())
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn host(&self) -> &str {
        self.origin.trim_start_matches("https://")
    }
}

fn location(r: &reqwest::Response, base: &str) -> String {
    let l = r.headers()["location"].to_str().unwrap();
    if l.starts_with('/') {
        format!("{base}{l}")
    } else {
        l.to_owned()
    }
}

/// Goes from `start` (`/auth/login`, or `/auth/login?to=ui`) to the provider's sign-in form;
/// returns the form's URL.
async fn to_sign_in_form(b: &reqwest::Client, s: &Setup, start: &str) -> String {
    let r = b.get(format!("{}{start}", s.origin)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let authorize = location(&r, &s.origin);
    assert!(authorize.starts_with(&format!("{}/auth?", s.provider.url)));
    assert!(authorize.contains("code_challenge_method=S256"));
    let r = b.get(&authorize).send().await.unwrap();
    let interaction = location(&r, &s.provider.url);
    let form = b
        .get(&interaction)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = form
        .split("action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the provider's sign-in form");
    format!("{}{action}", s.provider.url)
}

/// Posts the sign-in form and follows the provider back to the registry's callback; returns
/// the callback URL.
async fn sign_in_at_provider(b: &reqwest::Client, s: &Setup, user: &str, password: &str) -> String {
    sign_in_from(b, s, "/auth/login", user, password).await
}

/// [`sign_in_at_provider`], starting at `start`.
async fn sign_in_from(
    b: &reqwest::Client,
    s: &Setup,
    start: &str,
    user: &str,
    password: &str,
) -> String {
    let form = to_sign_in_form(b, s, start).await;
    let r = b
        .post(&form)
        .form(&[("login", user), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the provider took the password");
    let mut next = location(&r, &s.provider.url);
    // The provider resumes the authorization, then sends the browser back.
    while next.starts_with(&s.provider.url) {
        let r = b.get(&next).send().await.unwrap();
        next = location(&r, &s.provider.url);
    }
    assert!(
        next.starts_with(&format!("{}/auth/callback?", s.origin)),
        "{next}"
    );
    next
}

/// The page at `url`.
async fn text(b: &reqwest::Client, url: String) -> String {
    b.get(url).send().await.unwrap().text().await.unwrap()
}

/// The whole flow; the callback's status and page.
async fn sign_in(b: &reqwest::Client, s: &Setup, user: &str, password: &str) -> (u16, String) {
    let callback = sign_in_at_provider(b, s, user, password).await;
    let r = b.get(&callback).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The personal access token a page shows: (name, secret).
fn shown_token(page: &str) -> (String, String) {
    let secret = page
        .split("<pre>")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .expect("the secret is shown")
        .to_owned();
    let name = page
        .split(" -u ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("the docker login line")
        .to_owned();
    (name, secret)
}

fn seed(work: &Path, s: &Setup, repo: &str, creds: &str) -> Result<(), String> {
    let layout = work.join(format!("layout-{}", repo.replace('/', "-")));
    if !layout.exists() {
        write_oci_layout(&layout, "v1", &[tar(&[("f", &data(5_000, 3)[..])])]);
    }
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/{repo}:v1", s.host()),
    ])
    .output()
    .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn people_sign_in_and_use_their_token_with_their_groups_rights() {
    let s = tokio::task::spawn_blocking(Setup::new).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let b = s.browser();
    let (status, page) = sign_in(&b, &s, "ann", "ann-pw").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Signed in as <strong>ann@example.com</strong>"),
        "{page}"
    );
    let (name, secret) = shown_token(&page);
    assert!(
        name.starts_with("pat-") && secret.starts_with("rgt_"),
        "{name} {secret}"
    );
    assert!(page.contains(&format!(
        "echo '{secret}' | docker login {} -u {name} --password-stdin",
        s.host()
    )));
    let creds = format!("{name}:{secret}");
    // ann is in devs: devs/** yes, ops/** no.
    let (w, c) = (work.path().to_owned(), creds.clone());
    let s = std::sync::Arc::new(s);
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        seed(&w, &s2, "devs/app", &c).unwrap();
        assert!(seed(&w, &s2, "ops/app", &c).is_err());
    })
    .await
    .unwrap();
    // docker logs in with the token, pulls what ann pushed and pushes it elsewhere in devs/;
    // then the password user ci, through the built-in token service, pushes to ci/.
    let (s3, c, w) = (s.clone(), creds.clone(), work.path().to_owned());
    tokio::task::spawn_blocking(move || {
        let docker = Docker::start(&w.join("docker"));
        let host = s3.host();
        let (user, password) = c.split_once(':').unwrap();
        run(docker.cmd(&["login", host, "-u", user, "-p", password]));
        let pulled = format!("{host}/devs/app:v1");
        run(docker.cmd(&["pull", &pulled]));
        run(docker.cmd(&["tag", &pulled, &format!("{host}/devs/docker:v1")]));
        run(docker.cmd(&["push", &format!("{host}/devs/docker:v1")]));
        run(docker.cmd(&["tag", &pulled, &format!("{host}/ops/docker:v1")]));
        let refused =
            common::tools::run_fails(docker.cmd(&["push", &format!("{host}/ops/docker:v1")]));
        assert!(refused.contains("denied"), "{refused}");
        run(docker.cmd(&["login", host, "-u", "ci", "-p", CI_PASSWORD.trim()]));
        run(docker.cmd(&["tag", &pulled, &format!("{host}/ci/docker:v1")]));
        run(docker.cmd(&["push", &format!("{host}/ci/docker:v1")]));
    })
    .await
    .unwrap();

    // The token page: list, make another, revoke (with the session's CSRF field only).
    let tokens = text(&b, format!("{}/auth/tokens", s.origin)).await;
    assert!(tokens.contains(&name), "{tokens}");
    let csrf = tokens
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let post = |form: Vec<(&'static str, String)>| {
        b.post(format!("{}/auth/tokens", s.origin))
            .form(&form)
            .send()
    };
    let forged = post(vec![
        ("csrf", "0000".into()),
        ("action", "revoke".into()),
        ("name", name.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(forged.status(), 400);
    let made = post(vec![("csrf", csrf.clone()), ("action", "create".into())])
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (second, _) = shown_token(&made);
    assert_ne!(second, name);
    let revoked = post(vec![
        ("csrf", csrf.clone()),
        ("action", "revoke".into()),
        ("name", name.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(revoked.status(), 200);
    assert!(revoked
        .text()
        .await
        .unwrap()
        .contains(&format!("Revoked {name}.")));
    // Nobody else's token can be revoked from this session, and none without one.
    // (ci is the password user: a token of that name is not this person's.)
    let stranger = post(vec![
        ("csrf", csrf.clone()),
        ("action", "revoke".into()),
        ("name", "ci".into()),
    ])
    .await
    .unwrap();
    assert_eq!(stranger.status(), 400);
    let no_session = s
        .browser()
        .get(format!("{}/auth/tokens", s.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(no_session.status(), 401);
    let (w, s4) = (work.path().to_owned(), s.clone());
    tokio::task::spawn_blocking(move || {
        let err = seed(&w, &s4, "devs/again", &creds).unwrap_err();
        assert!(err.contains("401") || err.contains("nauthorized"), "{err}");
    })
    .await
    .unwrap();
    let listed = ok(s.home.path(), &["token", "list"], None);
    assert!(listed.contains(&format!("{second}\t")) && listed.contains("owner ann@example.com"));
    assert!(!listed.contains(&format!("{name}\t")));
}

/// People sign in to the web interface with the provider too: a session there with their
/// groups' rights, and no personal access token made for it.
#[tokio::test]
async fn people_sign_in_to_the_web_interface() {
    let s = tokio::task::spawn_blocking(Setup::new).await.unwrap();
    let b = s.browser();
    let login = b
        .get(format!("{}/ui/login", s.origin))
        .send()
        .await
        .unwrap();
    let login = login.text().await.unwrap();
    assert!(login.contains("href=\"/auth/login?to=ui\""), "{login}");
    let callback = sign_in_from(&b, &s, "/auth/login?to=ui", "ann", "ann-pw").await;
    let r = b.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let session = (r.headers().get_all("set-cookie").iter())
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("registry_ui_session="))
        .expect("a web session");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(session.contains(attribute), "{session}");
    }
    let page = b.get(format!("{}/", s.origin)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("Signed in as <strong>ann@example.com</strong>"),
        "{page}"
    );
    // A sign-in for a token (in another browser) makes ann's first and only token.
    let other = s.browser();
    let (status, shown) = sign_in(&other, &s, "ann", "ann-pw").await;
    assert_eq!(status, 200, "{shown}");
    let tokens = text(&other, format!("{}/auth/tokens", s.origin)).await;
    assert_eq!(tokens.matches("<code>pat-").count(), 1, "{tokens}");
}

#[tokio::test]
async fn who_may_enter_and_bad_callbacks() {
    let s = tokio::task::spawn_blocking(Setup::new).await.unwrap();
    // bob enters by group (ops); cat's domain and groups are not allowed; eve's address is
    // at an allowed domain but not verified.
    let (status, page) = sign_in(&s.browser(), &s, "bob", "bob-pw").await;
    assert_eq!(status, 200, "{page}");
    for (user, password) in [("cat", "cat-pw"), ("eve", "eve-pw")] {
        let (status, page) = sign_in(&s.browser(), &s, user, password).await;
        assert_eq!(status, 401, "{user}: {page}");
        assert!(page.contains("may not use this registry"), "{user}: {page}");
    }
    // A wrong password stays at the provider.
    let b = s.browser();
    let form = to_sign_in_form(&b, &s, "/auth/login").await;
    let r = b
        .post(&form)
        .form(&[("login", "ann"), ("password", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("wrong user name or password"));

    // A wrong state: the callback with another state than the cookie's.
    let b = s.browser();
    let callback = sign_in_at_provider(&b, &s, "ann", "ann-pw").await;
    let wrong = callback.replace("state=", "state=x");
    let r = b.get(&wrong).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("state does not match"));
    // The sign-in cookie was spent by that answer: the right URL now finds no sign-in.
    let r = b.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A replayed code: the callback again with the same sign-in cookie; the provider refuses.
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let ca = reqwest::Certificate::from_pem(&s.ca).unwrap();
    let b = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let callback = sign_in_at_provider(&b, &s, "ann", "ann-pw").await;
    let url: reqwest::Url = callback.parse().unwrap();
    let cookies = reqwest::cookie::CookieStore::cookies(&*jar, &url).expect("the sign-in cookie");
    let first = b.get(&callback).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let replay = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap()
        .get(&callback)
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    let page = replay.text().await.unwrap();
    assert!(
        page.contains("refused the sign-in: invalid_grant"),
        "{page}"
    );
    // No code, or an error from the provider.
    let r = s
        .browser()
        .get(format!("{}/auth/callback", s.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .browser()
        .get(format!(
            "{}/auth/callback?error=access_denied&error_description=no",
            s.origin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_refusal() {
    let mut s = tokio::task::spawn_blocking(Setup::new).await.unwrap();
    let _ = s.provider.child.kill();
    let _ = s.provider.child.wait();
    let r = s
        .browser()
        .get(format!("{}/auth/login", s.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("The identity provider could not be reached"));
    // The registry itself keeps answering.
    let r = s
        .browser()
        .get(format!("{}/v2/", s.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
