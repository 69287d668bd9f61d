//! The guard's decisions, without HTTP.

use super::*;
use crate::Rule;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn admission() {
    let open = Guard::open();
    assert_eq!(open.admit(None, None, None), Ok(ip("0.0.0.0")));
    assert_eq!(
        open.admit(Some(ip("::ffff:10.0.0.1")), None, None),
        Ok(ip("10.0.0.1"))
    );
    let only_local = Guard::open()
        .with_allowed_addresses(IpRanges::parse(&["127.0.0.1"]).unwrap())
        .with_trusted_proxies(IpRanges::parse(&["127.0.0.1"]).unwrap());
    assert!(only_local.admit(None, None, None).is_err());
    assert!(only_local.admit(Some(ip("127.0.0.1")), None, None).is_ok());
    assert!(only_local.admit(Some(ip("127.0.0.2")), None, None).is_err());
    assert!(only_local
        .admit(Some(ip("127.0.0.1")), Some("for=unknown"), None)
        .is_err());
    let deny_all = Guard::open().with_allowed_addresses(IpRanges::parse(&["0.0.0.0/32"]).unwrap());
    assert!(deny_all.admit(Some(ip("127.0.0.1")), None, None).is_err());
    assert!(deny_all.admit(Some(ip("::1")), None, None).is_err());
}

#[tokio::test]
async fn certificates_and_anonymous() {
    let names = vec![NamePattern::parse("*.ci.example.com").unwrap()];
    let guard = Guard::open().with_client_certificates(Some(names));
    let local = ip("127.0.0.1");
    let cert = |names: &[&str]| ClientCertificate {
        names: names.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(
        guard
            .authenticate(
                local,
                Some(&cert(&["x.example.com", "a.ci.example.com"])),
                None
            )
            .await,
        Ok(Identity::Certificate("a.ci.example.com".into()))
    );
    assert!(matches!(
        guard
            .authenticate(local, Some(&cert(&["x.example.com"])), None)
            .await,
        Err(Refusal::Denied(_))
    ));
    assert!(matches!(
        guard.authenticate(local, Some(&cert(&[])), None).await,
        Err(Refusal::Denied(_))
    ));
    // Authentication is configured, so anonymous requests are denied by default, and
    // without Basic there is nothing to challenge with.
    let anon = guard.authenticate(local, None, None).await.unwrap();
    assert_eq!(anon, Identity::Anonymous);
    assert!(matches!(
        guard.authorize(&anon, Action::Pull, None),
        Err(Refusal::Denied(_))
    ));
    let public = Guard::open()
        .with_client_certificates(None)
        .with_policy(Policy::new(Anonymous::Pull, Vec::new()));
    assert!(public.authorize(&anon, Action::Pull, Some("x")).is_ok());
    assert!(public.authorize(&anon, Action::Push, Some("x")).is_err());
    assert!(!public.restricts(&Identity::Certificate("c".into())));
    // With no guard configured at all, everyone may do everything.
    assert!(Guard::open()
        .authorize(&anon, Action::Delete, Some("x"))
        .is_ok());
}

#[test]
fn signing_in_never_takes_rights_away() {
    let rules = vec![Rule::new(&["ann"], &[], &["team-a/**"], &["pull", "push"]).unwrap()];
    let public = Guard::open()
        .with_client_certificates(None)
        .with_policy(Policy::new(Anonymous::Pull, rules.clone()));
    let ann = Identity::User("ann".into());
    let bob = Identity::User("bob".into());
    for id in [&Identity::Anonymous, &ann, &bob] {
        assert!(public.may(id, Action::Pull, Some("team-b/app")), "{id}");
        assert!(!public.may(id, Action::Push, Some("team-b/app")), "{id}");
        assert!(!public.restricts(id), "{id} sees the whole catalog");
    }
    assert!(public.may(&ann, Action::Push, Some("team-a/app")));
    assert!(!public.may(&bob, Action::Push, Some("team-a/app")));
    let private = Guard::open()
        .with_client_certificates(None)
        .with_policy(Policy::new(Anonymous::Deny, rules));
    assert!(!private.may(&bob, Action::Pull, Some("team-b/app")));
    assert!(private.restricts(&bob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_logins_share_one_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, format!("ann:{}\n", bcrypt::hash("pw", 6).unwrap())).unwrap();
    // No cache at all, and a brake that allows two logins in flight.
    let basic = BasicAuth::open(&path, "r", Duration::ZERO).unwrap();
    let brake = BrakeSettings {
        attempts: 2,
        ..BrakeSettings::default()
    };
    let guard = Arc::new(Guard::open().with_basic(basic, brake));
    // "ann:pw" and "ann:px"
    let (right, wrong) = ("Basic YW5uOnB3", "Basic YW5uOnB4");
    let logins: Vec<_> = (0..24)
        .map(|_| {
            let g = guard.clone();
            tokio::spawn(async move { g.authenticate(ip("127.0.0.1"), None, Some(right)).await })
        })
        .collect();
    for l in logins {
        assert_eq!(l.await.unwrap(), Ok(Identity::User("ann".into())));
    }
    assert!(guard.flights.is_empty());
    // The same wrong guess in parallel is one failure, not 24.
    let guesses: Vec<_> = (0..24)
        .map(|_| {
            let g = guard.clone();
            tokio::spawn(async move { g.authenticate(ip("127.0.0.1"), None, Some(wrong)).await })
        })
        .collect();
    for g in guesses {
        assert!(matches!(
            g.await.unwrap(),
            Err(Refusal::Unauthenticated { .. })
        ));
    }
    assert!(guard.flights.is_empty());
    assert_eq!(
        guard.authenticate(ip("127.0.0.1"), None, Some(right)).await,
        Ok(Identity::User("ann".into()))
    );
}
