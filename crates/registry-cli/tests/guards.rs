//! End-to-end tests of the guards through real sockets: HTTP Basic from htpasswd (every hash
//! format, every endpoint, the brute-force brake, reloads), anonymous read-only pull, access
//! rules and the filtered catalog, IP allowlists with trusted proxies, TLS and mutual TLS with
//! certificates made by rcgen. Each refusal is checked for its exact status and code, and for
//! having stored nothing.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pki::{Ca, Validity};
use common::{data, sha256, Server};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Users in every hash format the registry reads; all passwords are known.
fn write_htpasswd(path: &Path) {
    let bcrypt = bcrypt::hash("ann-secret", 4).unwrap();
    let text = format!(
        "# test users\n\
         ann:{bcrypt}\n\
         bob:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\n\
         cid:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
         dee:$6$rounds=10000$saltstringsaltstring$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.\n\
         eve:$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5\n\
         this line is broken\n"
    );
    std::fs::write(path, text).unwrap();
}

const ANN: (&str, &str) = ("ann", "ann-secret");
const BOB: (&str, &str) = ("bob", "password");

fn config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("registry.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn send(rb: RequestBuilder, creds: Option<(&str, &str)>) -> Response {
    let rb = match creds {
        Some((u, p)) => rb.basic_auth(u, Some(p)),
        None => rb,
    };
    rb.send().await.unwrap()
}

async fn expect_error(r: Response, status: StatusCode, code: &str) -> Response {
    assert_eq!(r.status(), status, "{} {}", r.url(), code);
    assert_eq!(
        r.headers()
            .get("docker-distribution-api-version")
            .map(|v| v.to_str().unwrap()),
        Some("registry/2.0")
    );
    let headers = r.headers().clone();
    let url = r.url().clone();
    let bytes = r.bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    if !bytes.is_empty() {
        assert_eq!(body["errors"][0]["code"], code, "{url}: {body}");
    }
    // Hand back something the caller can inspect the headers of.
    let mut builder = http::Response::builder().status(status);
    for (k, v) in &headers {
        builder = builder.header(k, v);
    }
    Response::from(builder.body(body.to_string()).unwrap())
}

/// Pushes a one-layer image to `repo:tag` with raw HTTP; returns (manifest digest, layer digest).
async fn push_image(
    http: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    creds: Option<(&str, &str)>,
) -> (String, String) {
    let seed = repo
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let layer = data(3000, seed);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for blob in [&layer, &config] {
        let d = sha256(blob);
        let r = send(
            http.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .body(blob.clone()),
            creds,
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED, "push blob to {repo}");
    }
    let manifest = common::oci_manifest(
        (&sha256(&config), config.len()),
        &[(&sha256(&layer), layer.len())],
    );
    let r = send(
        http.put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone()),
        creds,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED, "push manifest to {repo}");
    (sha256(&manifest), sha256(&layer))
}

/// Asserts the storage holds no repository and no upload session.
fn nothing_stored(server: &Server) {
    for dir in ["catalog", "repositories", "uploads"] {
        let path = server.data().join(dir);
        let entries = std::fs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
        assert_eq!(entries, 0, "{} is not empty", path.display());
    }
}

/// Every kind of request a client makes, without credentials or with the given ones.
fn every_endpoint(http: &Client, base: &str) -> Vec<RequestBuilder> {
    let d = sha256(b"x");
    vec![
        http.get(format!("{base}/v2/")),
        http.head(format!("{base}/v2/")),
        http.get(format!("{base}/v2/_catalog")),
        http.get(format!("{base}/v2/a/b/tags/list")),
        http.get(format!("{base}/v2/a/b/manifests/latest")),
        http.head(format!("{base}/v2/a/b/manifests/latest")),
        http.get(format!("{base}/v2/a/b/blobs/{d}")),
        http.head(format!("{base}/v2/a/b/blobs/{d}")),
        http.get(format!("{base}/v2/a/b/referrers/{d}")),
        http.post(format!("{base}/v2/a/b/blobs/uploads/")),
        http.post(format!("{base}/v2/a/b/blobs/uploads/?digest={d}"))
            .body("x"),
        http.patch(format!("{base}/v2/a/b/blobs/uploads/some-id"))
            .body("x"),
        http.put(format!("{base}/v2/a/b/blobs/uploads/some-id?digest={d}")),
        http.delete(format!("{base}/v2/a/b/blobs/uploads/some-id")),
        http.put(format!("{base}/v2/a/b/manifests/latest"))
            .header("content-type", OCI_MANIFEST)
            .body("{}"),
        http.delete(format!("{base}/v2/a/b/manifests/latest")),
        http.delete(format!("{base}/v2/a/b/blobs/{d}")),
        http.get(format!("{base}/metrics")),
        http.get(format!("{base}/v2/not/an/endpoint")),
    ]
}

#[tokio::test]
async fn basic_auth_on_every_endpoint_and_every_hash_format() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let server = Server::start(&["--htpasswd", htpasswd.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();

    for rb in every_endpoint(&http, &base) {
        let r = expect_error(
            send(rb, None).await,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        )
        .await;
        assert_eq!(
            r.headers()["www-authenticate"].to_str().unwrap(),
            "Basic realm=\"Registry\""
        );
    }
    // Wrong password and unknown user: the same answer, to the byte.
    let wrong = send(http.get(format!("{base}/v2/")), Some(("ann", "nope"))).await;
    let unknown = send(http.get(format!("{base}/v2/")), Some(("zed", "ann-secret"))).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.headers()["www-authenticate"],
        unknown.headers()["www-authenticate"]
    );
    assert_eq!(wrong.bytes().await.unwrap(), unknown.bytes().await.unwrap());
    // Wrong passwords on every endpoint, from another address: 401 for the 10 failures the
    // default brake allows (the 10th engages it), then 429.
    let attacker = |ip: &str| {
        Client::builder()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let mut statuses = Vec::new();
    for rb in every_endpoint(&attacker("127.0.0.2"), &base) {
        statuses.push(send(rb, Some(("ann", "wrong"))).await.status().as_u16());
    }
    let mut expected = vec![401; 10];
    expected.resize(statuses.len(), 429);
    assert_eq!(statuses, expected);
    // Different guesses in parallel cannot overrun the limit: at most 10 are verified.
    let client = attacker("127.0.0.3");
    let statuses: Vec<u16> =
        futures::future::join_all(every_endpoint(&client, &base).into_iter().enumerate().map(
            |(i, rb)| async move {
                let guess = format!("guess-{i}");
                send(rb, Some(("ann", &guess))).await.status().as_u16()
            },
        ))
        .await;
    let verified = statuses.iter().filter(|&&s| s == 401).count();
    assert!((1..=10).contains(&verified), "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 401 || s == 429),
        "{statuses:?}"
    );
    // A header that is not valid Basic is refused too.
    let r = http
        .get(format!("{base}/v2/"))
        .header("authorization", "Basic !!!")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    nothing_stored(&server);

    // Every hash format logs in.
    for (user, password) in [
        ANN,
        BOB,
        ("cid", "password"),
        ("dee", "Hello world!"),
        ("eve", "Hello world!"),
    ] {
        let r = send(http.get(format!("{base}/v2/")), Some((user, password))).await;
        assert_eq!(r.status(), StatusCode::OK, "{user}");
    }
    // The broken line did not stop the server; users push and pull.
    let (manifest, layer) = push_image(&http, &base, "team/app", "v1", Some(ANN)).await;
    let r = send(
        http.get(format!("{base}/v2/team/app/manifests/{manifest}")),
        Some(BOB),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send(
        http.get(format!("{base}/v2/team/app/blobs/{layer}")),
        Some(BOB),
    )
    .await;
    assert_eq!(r.bytes().await.unwrap().len(), 3000);
    // Health checks need no credentials.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn htpasswd_changes_apply_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let server = Server::start(&["--htpasswd", htpasswd.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    assert_eq!(
        send(http.get(format!("{base}/v2/")), Some(ANN))
            .await
            .status(),
        StatusCode::OK
    );
    // Replace the file: ann is gone, fay is new.
    let fay = bcrypt::hash("fay-secret", 4).unwrap();
    std::fs::write(&htpasswd, format!("fay:{fay}\n")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fay_ok = send(http.get(format!("{base}/v2/")), Some(("fay", "fay-secret"))).await;
        if fay_ok.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new file was not read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cached success of ann does not outlive the file that allowed it.
    expect_error(
        send(http.get(format!("{base}/v2/")), Some(ANN)).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    )
    .await;
}

#[tokio::test]
async fn brute_force_brake() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let cfg = config(
        dir.path(),
        &format!(
            "[auth]\nhtpasswd = {:?}\nbrake = {{ attempts = 3, window = \"1m\", pause = \"3s\" }}\n",
            htpasswd
        ),
    );
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    for _ in 0..3 {
        let r = send(http.get(format!("{base}/v2/")), Some(("ann", "guess"))).await;
        expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
    // The third failure engaged the brake for ann from this address; then even the right
    // password waits (it was not verified before the brake engaged).
    let r = send(http.get(format!("{base}/v2/")), Some(("ann", "guess"))).await;
    let r = expect_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    let r = send(http.get(format!("{base}/v2/")), Some(ANN)).await;
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    let r = send(http.post(format!("{base}/v2/x/blobs/uploads/")), Some(ANN)).await;
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    nothing_stored(&server);
    // Another address is not braked.
    let other = Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        send(other.get(format!("{base}/v2/")), Some(ANN))
            .await
            .status(),
        StatusCode::OK
    );
    // After the pause, the right password works again.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        send(http.get(format!("{base}/v2/")), Some(ANN))
            .await
            .status(),
        StatusCode::OK
    );
}

/// One office or CI fleet behind one NAT: a job with a wrong or unknown user name, or someone
/// guessing, must not lock out everyone else at that address.
#[tokio::test]
async fn the_brake_spares_others_behind_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let cfg = config(
        dir.path(),
        &format!("[auth]\nhtpasswd = {htpasswd:?}\nbrake = {{ address_attempts = 30 }}\n"),
    );
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let status = |ip: &'static str, creds: (String, &'static str)| {
        let base = base.clone();
        async move {
            let from = Client::builder()
                .local_address(ip.parse::<IpAddr>().unwrap())
                .build()
                .unwrap();
            let r = send(from.get(format!("{base}/v2/")), Some((&creds.0, creds.1))).await;
            r.status().as_u16()
        }
    };
    let nat = "127.0.0.1";
    let user = |name: &str| name.to_owned();
    // A job with a user that does not exist: ten 401s (the tenth engages the brake), then 429.
    let mut job = Vec::new();
    for _ in 0..11 {
        job.push(status(nat, (user("nobody"), "wrong")).await);
    }
    assert_eq!(job, [[401; 10].as_slice(), &[429]].concat());
    // Everyone else behind the same address logs in, for the first time or again.
    assert_eq!(status(nat, (user("ann"), ANN.1)).await, 200);
    assert_eq!(status(nat, (user("bob"), BOB.1)).await, 200);
    // Someone guessing ann's password from there brakes ann's name at that address, but not
    // her session (a password verified shortly before) nor anyone else.
    for _ in 0..10 {
        assert_eq!(status(nat, (user("ann"), "guess")).await, 401);
    }
    assert_eq!(status(nat, (user("ann"), "guess")).await, 429);
    assert_eq!(status(nat, (user("ann"), ANN.1)).await, 200, "remembered");
    assert_eq!(status(nat, (user("cid"), "password")).await, 200);
    // A login clears its name's failures: a user who mistypes is not braked by old typos.
    let typist = "127.0.0.4";
    for round in 0..3 {
        for _ in 0..9 {
            let s = status(typist, (user("eve"), "typo")).await;
            assert_eq!(s, 401, "round {round}");
        }
        let s = status(typist, (user("eve"), "Hello world!")).await;
        assert_eq!(s, 200, "round {round}");
    }
    // Guessing many names engages the brake for the whole address after 30 failures.
    let sprayer = "127.0.0.5";
    let mut sprayed = Vec::new();
    for n in 0..31 {
        sprayed.push(status(sprayer, (format!("user{n}"), "password")).await);
    }
    assert_eq!(sprayed, [[401; 30].as_slice(), &[429]].concat());
    let first_login = (user("dee"), "Hello world!");
    assert_eq!(status(sprayer, first_login.clone()).await, 429);
    // Other addresses are not braked at all.
    assert_eq!(status("127.0.0.2", first_login).await, 200);
}

/// Public read with access rules: signing in never takes rights away (README, guards).
#[tokio::test]
async fn signed_in_users_keep_what_anonymous_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let cfg = config(
        dir.path(),
        &format!(
            "[auth]\nhtpasswd = {htpasswd:?}\npublic_read = true\n\n[[access]]\nusers = [\"ann\"]\nrepositories = [\"team-a/**\"]\nactions = [\"pull\", \"push\"]\n"
        ),
    );
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    let (manifest, _) = push_image(&http, &base, "team-a/app", "v1", Some(ANN)).await;
    let path = format!("{base}/v2/team-a/app/manifests/{manifest}");
    for creds in [None, Some(BOB), Some(ANN)] {
        let r = send(http.get(&path), creds).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{creds:?} pulls what anyone may"
        );
        let catalog = send(http.get(format!("{base}/v2/_catalog")), creds).await;
        let body: Value = catalog.json().await.unwrap();
        assert_eq!(body["repositories"], json!(["team-a/app"]), "{creds:?}");
    }
    // Pushing still takes a rule.
    let r = send(
        http.post(format!("{base}/v2/team-a/app/blobs/uploads/")),
        Some(BOB),
    )
    .await;
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
}

#[tokio::test]
async fn anonymous_read_only_pull() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let server = Server::start(&["--htpasswd", htpasswd.to_str().unwrap(), "--public-read"]);
    let base = server.url();
    let http = Client::new();
    let (manifest, layer) = push_image(&http, &base, "pub/app", "v1", Some(ANN)).await;
    for path in [
        "/v2/".to_owned(),
        "/v2/_catalog".to_owned(),
        "/v2/pub/app/tags/list".to_owned(),
        format!("/v2/pub/app/manifests/{manifest}"),
        "/v2/pub/app/manifests/v1".to_owned(),
        format!("/v2/pub/app/blobs/{layer}"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "anonymous GET {path}");
        if !path.contains("_catalog") && !path.contains("/tags/") {
            let r = http.head(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "anonymous HEAD {path}");
        }
    }
    // Writes still need an identity: 401 with a challenge, and nothing changes.
    for rb in [
        http.post(format!("{base}/v2/pub/app/blobs/uploads/")),
        http.post(format!(
            "{base}/v2/pub/new/blobs/uploads/?digest={}",
            sha256(b"x")
        ))
        .body("x"),
        http.put(format!("{base}/v2/pub/app/manifests/v2"))
            .header("content-type", OCI_MANIFEST)
            .body("{}"),
        http.delete(format!("{base}/v2/pub/app/manifests/v1")),
        http.delete(format!("{base}/v2/pub/app/blobs/{layer}")),
    ] {
        let r = expect_error(
            rb.send().await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        )
        .await;
        assert!(r.headers().contains_key("www-authenticate"));
    }
    let tags: Value = common::get_json(&http, format!("{base}/v2/pub/app/tags/list")).await;
    assert_eq!(tags["tags"], json!(["v1"]));
    let catalog: Value = common::get_json(&http, format!("{base}/v2/_catalog")).await;
    assert_eq!(catalog["repositories"], json!(["pub/app"]));
    // Wrong credentials are not quietly treated as anonymous.
    let r = send(http.get(format!("{base}/v2/")), Some(("ann", "wrong"))).await;
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn access_rules_across_repositories_and_in_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let cfg = config(
        dir.path(),
        &format!(
            r#"[auth]
htpasswd = {htpasswd:?}

[[access]]
users = ["ann"]
repositories = ["team-a/**", "shared/*"]
actions = ["pull", "push", "delete"]

[[access]]
users = ["bob"]
repositories = ["team-b/**"]
actions = ["pull", "push"]

[[access]]
users = ["*"]
repositories = ["shared/*"]
actions = ["pull"]
"#
        ),
    );
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    let (a_manifest, a_layer) = push_image(&http, &base, "team-a/app", "v1", Some(ANN)).await;
    push_image(&http, &base, "team-a/deep/tool", "v1", Some(ANN)).await;
    push_image(&http, &base, "shared/base", "v1", Some(ANN)).await;
    push_image(&http, &base, "team-b/app", "v1", Some(BOB)).await;

    // bob: no access to team-a, read-only on shared, no delete on his own.
    for rb in [
        http.get(format!("{base}/v2/team-a/app/manifests/{a_manifest}")),
        http.get(format!("{base}/v2/team-a/app/blobs/{a_layer}")),
        http.get(format!("{base}/v2/team-a/app/tags/list")),
        http.post(format!("{base}/v2/team-a/app/blobs/uploads/")),
        http.post(format!("{base}/v2/shared/base/blobs/uploads/")),
        http.delete(format!("{base}/v2/team-b/app/manifests/v1")),
    ] {
        expect_error(send(rb, Some(BOB)).await, StatusCode::FORBIDDEN, "DENIED").await;
    }
    let r = send(
        http.get(format!("{base}/v2/shared/base/manifests/v1")),
        Some(BOB),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Mounting from a repository bob may not pull does not link the blob: a plain session.
    let r = send(
        http.post(format!(
            "{base}/v2/team-b/app/blobs/uploads/?mount={a_layer}&from=team-a/app"
        )),
        Some(BOB),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = send(
        http.head(format!("{base}/v2/team-b/app/blobs/{a_layer}")),
        Some(BOB),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // ann may mount into her repositories.
    let r = send(
        http.post(format!(
            "{base}/v2/team-a/other/blobs/uploads/?mount={a_layer}&from=team-a/app"
        )),
        Some(ANN),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // The catalog shows each user what they may pull, page by page.
    let catalog = |creds: (&'static str, &'static str), query: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = send(http.get(format!("{base}/v2/_catalog{query}")), Some(creds)).await;
            assert_eq!(r.status(), StatusCode::OK);
            let link = r
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            (body["repositories"].clone(), link)
        }
    };
    let (bob_sees, _) = catalog(BOB, "").await;
    assert_eq!(bob_sees, json!(["shared/base", "team-b/app"]));
    let (ann_sees, _) = catalog(ANN, "").await;
    assert_eq!(
        ann_sees,
        json!([
            "shared/base",
            "team-a/app",
            "team-a/deep/tool",
            "team-a/other"
        ])
    );
    let (page, link) = catalog(BOB, "?n=1").await;
    assert_eq!(page, json!(["shared/base"]));
    assert!(link.unwrap().contains("last=shared%2Fbase"));
    let (page, _) = catalog(BOB, "?n=1&last=shared/base").await;
    assert_eq!(page, json!(["team-b/app"]));
    let (page, link) = catalog(BOB, "?n=5&last=team-b/app").await;
    assert_eq!((page, link), (json!([]), None));

    // A user no rule names can log in but sees and pulls nothing.
    let (cid_sees, _) = catalog(("cid", "password"), "").await;
    assert_eq!(cid_sees, json!(["shared/base"]));
    let r = send(
        http.get(format!("{base}/v2/team-b/app/tags/list")),
        Some(("cid", "password")),
    )
    .await;
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
}

#[tokio::test]
async fn ip_allowlist_and_trusted_proxies() {
    let from = |ip: &str| {
        Client::builder()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let (local, other) = (from("127.0.0.1"), from("127.0.0.2"));

    // Only 127.0.0.1: 127.0.0.2 is refused before anything else, on every endpoint.
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let server = Server::start(&[
        "--allow-ip",
        "127.0.0.1/32",
        "--htpasswd",
        htpasswd.to_str().unwrap(),
    ]);
    let base = server.url();
    for rb in every_endpoint(&other, &base) {
        expect_error(send(rb, Some(ANN)).await, StatusCode::FORBIDDEN, "DENIED").await;
    }
    // A denied address is not even asked for credentials, and wrong ones do not brake anybody.
    for _ in 0..20 {
        let r = send(other.get(format!("{base}/v2/")), Some(("ann", "guess"))).await;
        expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    }
    expect_error(
        other.get(format!("{base}/healthz")).send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "DENIED",
    )
    .await;
    nothing_stored(&server);
    assert_eq!(
        send(local.get(format!("{base}/v2/")), Some(ANN))
            .await
            .status(),
        StatusCode::OK
    );
    drop(server);

    // 0.0.0.0/32 denies everyone.
    let server = Server::start(&["--allow-ip", "0.0.0.0/32"]);
    let r = local
        .get(format!("{}/v2/", server.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    drop(server);

    // Behind a trusted proxy (127.0.0.1), the forwarded address is the client's.
    let server = Server::start(&[
        "--allow-ip",
        "192.0.2.0/24",
        "--trusted-proxies",
        "127.0.0.1",
    ]);
    let base = server.url();
    let get = |client: &Client, header: &str, value: &str| {
        client
            .get(format!("{base}/v2/"))
            .header(header, value)
            .send()
    };
    assert_eq!(
        get(&local, "x-forwarded-for", "192.0.2.7")
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&local, "forwarded", "for=192.0.2.8;proto=https")
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let r = get(&local, "x-forwarded-for", "198.51.100.1")
        .await
        .unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    // A client cannot prepend an allowed address to the chain the proxy extends.
    let r = get(&local, "x-forwarded-for", "192.0.2.7, 198.51.100.1")
        .await
        .unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    // From an untrusted peer, the header is ignored: a spoof gets nowhere.
    let r = get(&other, "x-forwarded-for", "192.0.2.7").await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    let r = get(&other, "forwarded", "for=192.0.2.7").await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    // Without the header, the proxy itself is not an allowed client.
    let r = local.get(format!("{base}/v2/")).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;
}

/// A TLS server with client certificates; returns (server, base URL, CA, files directory).
struct Tls {
    server: Server,
    base: String,
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Tls {
    fn start(args: &[&str]) -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let (cert, key) = ca.server().write(dir.path(), "server.pem", "server.key");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let mut all = vec![
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
            "--client-ca".to_owned(),
            ca_path.display().to_string(),
        ];
        all.extend(
            args.iter()
                .map(|s| s.replace("{dir}", &dir.path().display().to_string())),
        );
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let server = Server::start(&all);
        let base = format!("https://{}", server.addr);
        Tls {
            server,
            base,
            ca,
            dir,
        }
    }

    fn client(&self, identity: Option<reqwest::Identity>) -> Client {
        let mut b = Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap()]);
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build().unwrap()
    }
}

#[tokio::test]
async fn mutual_tls_with_authorized_names() {
    let t = Tls::start(&["--client-names", "*.clients.registry.example.com,builder"]);
    let ca = &t.ca;
    let good = t.client(Some(
        ca.client(&["ci.clients.registry.example.com"], "ci", Validity::Now)
            .identity(),
    ));
    // An authorized certificate needs no password: push and pull.
    let (manifest, _) = push_image(&good, &t.base, "mtls/app", "v1", None).await;
    let r = good
        .get(format!("{}/v2/mtls/app/manifests/{manifest}", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // CN counts only when there are no SANs.
    let cn_only = t.client(Some(ca.client(&[], "builder", Validity::Now).identity()));
    assert_eq!(
        cn_only
            .get(format!("{}/v2/", t.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let cn_ignored = t.client(Some(
        ca.client(&["nobody.example.com"], "builder", Validity::Now)
            .identity(),
    ));
    let r = cn_ignored
        .get(format!("{}/v2/", t.base))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "DENIED").await;

    // A valid certificate with a name that is not authorized: 403 on every endpoint.
    let stranger = t.client(Some(
        ca.client(&["a.b.clients.registry.example.com"], "x", Validity::Now)
            .identity(),
    ));
    for rb in every_endpoint(&stranger, &t.base) {
        expect_error(rb.send().await.unwrap(), StatusCode::FORBIDDEN, "DENIED").await;
    }
    // Handshake failures: no certificate, another CA, expired, not yet valid.
    let other_ca = Ca::new("other CA");
    let refused = [
        ("none", t.client(None)),
        (
            "other CA",
            t.client(Some(
                other_ca
                    .client(&["ci.clients.registry.example.com"], "ci", Validity::Now)
                    .identity(),
            )),
        ),
        (
            "expired",
            t.client(Some(
                ca.client(
                    &["ci.clients.registry.example.com"],
                    "ci",
                    Validity::Expired,
                )
                .identity(),
            )),
        ),
        (
            "not yet valid",
            t.client(Some(
                ca.client(&["ci.clients.registry.example.com"], "ci", Validity::NotYet)
                    .identity(),
            )),
        ),
    ];
    for (what, client) in refused {
        let r = client
            .post(format!("{}/v2/mtls/new/blobs/uploads/", t.base))
            .send()
            .await;
        assert!(r.is_err(), "{what}: {:?}", r.map(|r| r.status()));
    }
    // Plain HTTP to the TLS port gets nowhere either.
    let plain = Client::new()
        .get(format!("http://{}/v2/", t.server.addr))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    // Nothing but the one image was stored.
    let catalog: Value = common::get_json(&good, format!("{}/v2/_catalog", t.base)).await;
    assert_eq!(catalog["repositories"], json!(["mtls/app"]));
}

#[tokio::test]
async fn optional_client_certificates_with_basic_auth_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let t = Tls::start(&[
        "--client-auth",
        "optional",
        "--htpasswd",
        htpasswd.to_str().unwrap(),
    ]);
    let no_cert = t.client(None);
    let r = no_cert.get(format!("{}/v2/", t.base)).send().await.unwrap();
    let r = expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(
        send(no_cert.get(format!("{}/v2/", t.base)), Some(ANN))
            .await
            .status(),
        StatusCode::OK
    );
    let with_cert = t.client(Some(
        t.ca.client(&["anyone.example.com"], "x", Validity::Now)
            .identity(),
    ));
    push_image(&with_cert, &t.base, "opt/app", "v1", None).await;
    // A certificate from another CA still fails the handshake.
    let other = t.client(Some(
        Ca::new("other")
            .client(&["x.example.com"], "x", Validity::Now)
            .identity(),
    ));
    assert!(other.get(format!("{}/v2/", t.base)).send().await.is_err());

    // Renewal: new certificate and key from a new CA, written in place; new connections see
    // them without a restart.
    let new_ca = Ca::new("renewed CA");
    new_ca
        .server()
        .write(t.dir.path(), "server.pem", "server.key");
    let trusting_new = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(new_ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = trusting_new
            .get(format!("{}/v2/", t.base))
            .basic_auth(ANN.0, Some(ANN.1))
            .send()
            .await;
        match r.map(|r| r.status()) {
            Ok(StatusCode::OK) => break,
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "certificate not reloaded"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test]
async fn https_and_plain_listeners_together() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("both CA");
    let (cert, key) = ca.server().write(dir.path(), "server.pem", "server.key");
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let plain = format!("127.0.0.1:{}", common::free_port());
    let cfg = config(
        dir.path(),
        &format!(
            "[tls]\ncert = {cert:?}\nkey = {key:?}\nplain_listen = {plain:?}\n[auth]\nhtpasswd = {htpasswd:?}\n"
        ),
    );
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let https = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let http = Client::new();
    let tls_base = format!("https://{}", server.addr);
    let plain_base = format!("http://{plain}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("{plain_base}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "plain listener did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One registry behind both: pushed over HTTPS, pulled over HTTP; the same guard on each.
    let (manifest, _) = push_image(&https, &tls_base, "both/app", "v1", Some(ANN)).await;
    let r = send(
        http.head(format!("{plain_base}/v2/both/app/manifests/{manifest}")),
        Some(BOB),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.get(format!("{plain_base}/v2/")).send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

/// Found by the auth benchmark: when the remembered password expired, 48 parallel requests of
/// one client all verified at once and the brake's in-flight limit answered 429. Concurrent
/// logins with the same credentials now share one verification.
#[tokio::test]
async fn parallel_requests_of_one_client_are_not_braked() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let cfg = config(
        dir.path(),
        &format!("[auth]\nhtpasswd = {htpasswd:?}\ncache = \"0s\"\nbrake = {{ attempts = 3 }}\n"),
    );
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    for _ in 0..3 {
        let statuses: Vec<u16> = futures::future::join_all((0..48).map(|_| async {
            send(http.get(format!("{base}/v2/")), Some(ANN))
                .await
                .status()
                .as_u16()
        }))
        .await;
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
}
