//! The brute-force brake. Failed logins are counted per address *and user name*: after
//! `attempts` failures for one name from one address within `window`, logins with that name
//! from that address are refused for `pause` without being verified. Failures are also counted
//! per address across all names, with the higher bound `address_attempts`, against guessing
//! many names. So one misconfigured job or one guesser behind a NAT does not lock out everyone
//! else behind it: other names are refused only when failures across names reach the
//! per-address bound. A verified login clears its name's failures (not the address's).
//!
//! IPv6 clients are counted per /64, since one host usually holds a whole /64. User names are
//! kept only as keyed hashes (bounded memory whatever clients send).
//!
//! While a brake is engaged, a password that was verified shortly before (the caller's cache)
//! still counts, so the sessions of the right user are not interrupted by someone else's
//! guessing; but each refused login during the pause is counted too, and once they reach the
//! same bound, remembered passwords wait as well, so the cache cannot become a fast oracle for
//! a guesser who keeps going. A remembered password is a success too, and clears its name's
//! failures: a job with a stale password beside busy jobs with the right one for the same name
//! (a CI fleet behind one NAT) does not brake that name; failures across names still brake the
//! address.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ip::client_key;

/// The brake's tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrakeSettings {
    /// Failures for one user name from one address that engage the brake (0: never).
    pub attempts: u32,
    /// Failures from one address, whatever the names, that engage it for the whole address
    /// (0: never).
    pub address_attempts: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long an engaged brake refuses.
    pub pause: Duration,
}

impl Default for BrakeSettings {
    fn default() -> Self {
        BrakeSettings {
            attempts: 10,
            address_attempts: 100,
            window: Duration::from_secs(60),
            pause: Duration::from_secs(300),
        }
    }
}

/// What failures are counted under: a whole address, or one user name from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    address: IpAddr,
    /// Keyed hash of the user name; `None` for the address across names.
    user: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    since: Instant,
    failures: u32,
    /// Attempts being verified right now: they count, so parallel guesses cannot overrun.
    inflight: u32,
    until: Option<Instant>,
    /// Logins refused while engaged, in this pause.
    refused: u32,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            since: now,
            failures: 0,
            inflight: 0,
            until: None,
            refused: 0,
        }
    }

    /// How long it stays engaged, if it is.
    fn engaged(&self, now: Instant) -> Option<Duration> {
        self.until.filter(|&u| u > now).map(|u| u - now)
    }

    /// Forgets failures older than the window and a pause that is over.
    fn refresh(&mut self, now: Instant, window: Duration) {
        if self.until.is_some_and(|u| u <= now) {
            self.until = None;
            self.refused = 0;
        }
        if now.duration_since(self.since) >= window {
            self.since = now;
            self.failures = 0;
        }
    }
}

/// Most tracked keys; beyond it, stale entries are dropped.
const TRACKED: usize = 65_536;

/// Counts failed logins per address and user name.
#[derive(Debug)]
pub struct Brake {
    settings: BrakeSettings,
    names: RandomState,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Brake {
    /// A brake with these settings.
    pub fn new(settings: BrakeSettings) -> Brake {
        Brake {
            settings,
            names: RandomState::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The two keys a login from `ip` as `user` is counted under, with their limits.
    fn keys(&self, ip: IpAddr, user: &str) -> [(Key, u32); 2] {
        let address = client_key(ip);
        [
            (
                Key {
                    address,
                    user: Some(self.names.hash_one(user)),
                },
                self.settings.attempts,
            ),
            (
                Key {
                    address,
                    user: None,
                },
                self.settings.address_attempts,
            ),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(retry_after)` while a brake is engaged for `user` from `ip`; the refusal is
    /// counted (see the module documentation).
    pub fn check(&self, ip: IpAddr, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut entries = self.lock();
        let mut longest = None;
        for (key, _) in self.keys(ip, user) {
            if let Some(entry) = entries.get_mut(&key) {
                if let Some(left) = entry.engaged(now) {
                    entry.refused = entry.refused.saturating_add(1);
                    longest = longest.max(Some(left));
                }
            }
        }
        longest.map_or(Ok(()), Err)
    }

    /// Whether a password verified shortly before for `user` may be used again from `ip`:
    /// `Err(retry_after)` only when a brake is engaged there and guessing went on during it.
    /// A login it allows is a success like a verified one: it clears the name's failures.
    pub fn remembered(&self, ip: IpAddr, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut entries = self.lock();
        let keys = self.keys(ip, user);
        let mut longest = None;
        for (key, limit) in keys {
            let Some(entry) = entries.get(&key) else {
                continue;
            };
            if let Some(left) = entry.engaged(now).filter(|_| entry.refused >= limit) {
                longest = longest.max(Some(left));
            }
        }
        if let Some(left) = longest {
            return Err(left);
        }
        if let Some(entry) = entries.get_mut(&keys[0].0) {
            entry.failures = 0;
        }
        Ok(())
    }

    /// Starts a login attempt from `ip` as `user`: `Err(retry_after)` while a brake is engaged,
    /// or when failures plus attempts in flight reach a limit. The attempt counts until it is
    /// finished or dropped (a dropped one, e.g. of a client that went away, counts as nothing).
    pub fn begin(&self, ip: IpAddr, user: &str) -> Result<Attempt<'_>, Duration> {
        let keys = self.keys(ip, user);
        let mut attempt = Attempt {
            brake: self,
            keys: [keys[0].0, keys[1].0],
            open: false,
        };
        let s = self.settings;
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= TRACKED {
            entries.retain(|_, e| {
                e.inflight > 0
                    || now.duration_since(e.since) < s.window
                    || e.until.is_some_and(|u| u > now)
            });
        }
        let counted: Vec<(Key, u32)> = keys.into_iter().filter(|&(_, l)| l > 0).collect();
        for &(key, limit) in &counted {
            let entry = entries.entry(key).or_insert_with(|| Entry::new(now));
            entry.refresh(now, s.window);
            if let Some(left) = entry.engaged(now) {
                entry.refused = entry.refused.saturating_add(1);
                return Err(left);
            }
            if entry.failures + entry.inflight >= limit {
                return Err(Duration::from_secs(1));
            }
        }
        for (key, _) in counted {
            if let Some(entry) = entries.get_mut(&key) {
                entry.inflight += 1;
            }
        }
        attempt.open = true;
        Ok(attempt)
    }

    /// Settles an attempt: `None` for one that was abandoned, else whether it succeeded.
    /// `Err(pause)` when this failure engaged a brake.
    fn settle(&self, keys: &[Key; 2], success: Option<bool>) -> Result<(), Duration> {
        let s = self.settings;
        let now = Instant::now();
        let mut entries = self.lock();
        let mut engaged = Ok(());
        for (key, limit) in keys.iter().zip([s.attempts, s.address_attempts]) {
            let Some(entry) = entries.get_mut(key).filter(|_| limit > 0) else {
                continue;
            };
            entry.inflight = entry.inflight.saturating_sub(1);
            match success {
                None => {}
                // A verified login clears the failures of its name, not of the address.
                Some(true) if key.user.is_some() => entry.failures = 0,
                Some(true) => {}
                Some(false) => {
                    entry.failures += 1;
                    if entry.failures >= limit {
                        entry.until = Some(now + s.pause);
                        entry.refused = 0;
                        entry.failures = 0;
                        entry.since = now;
                        engaged = Err(s.pause);
                    }
                }
            }
        }
        engaged
    }
}

/// A login attempt in flight; see [`Brake::begin`].
#[must_use]
pub struct Attempt<'a> {
    brake: &'a Brake,
    keys: [Key; 2],
    open: bool,
}

impl Attempt<'_> {
    /// Ends the attempt; `Err(pause)` when this failure engaged a brake (the failure itself is
    /// answered as any other; the brake refuses the logins after it).
    pub fn finish(mut self, success: bool) -> Result<(), Duration> {
        if std::mem::replace(&mut self.open, false) {
            self.brake.settle(&self.keys, Some(success))
        } else {
            Ok(())
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.brake.settle(&self.keys, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(attempts: u32, address_attempts: u32) -> BrakeSettings {
        BrakeSettings {
            attempts,
            address_attempts,
            window: Duration::from_secs(60),
            pause: Duration::from_millis(200),
        }
    }

    fn fail(brake: &Brake, ip: IpAddr, user: &str) -> Result<(), Duration> {
        brake.begin(ip, user)?.finish(false)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn engages_per_name_and_releases_after_pause() {
        let brake = Brake::new(settings(3, 100));
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert!(fail(&brake, a, "ann").is_ok());
        assert!(fail(&brake, a, "ann").is_ok());
        assert!(fail(&brake, a, "ann").is_err(), "the third failure engages");
        assert!(brake.begin(a, "ann").is_err());
        assert!(brake.check(a, "ann").is_err());
        assert!(brake.begin(a, "bob").is_ok(), "other names are not braked");
        assert!(brake.check(a, "bob").is_ok());
        assert!(
            brake.begin(b, "ann").is_ok(),
            "other addresses are not braked"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(brake.begin(a, "ann").is_ok());
    }

    #[test]
    fn guessing_many_names_engages_the_address() {
        let brake = Brake::new(settings(3, 5));
        let a = ip("192.0.2.1");
        for n in 0..4 {
            assert!(fail(&brake, a, &format!("user{n}")).is_ok());
        }
        assert!(fail(&brake, a, "user4").is_err(), "the fifth name engages");
        assert!(brake.begin(a, "someone-else").is_err());
        assert!(brake.begin(ip("192.0.2.9"), "someone-else").is_ok());
    }

    #[test]
    fn a_success_clears_its_names_failures() {
        let brake = Brake::new(settings(3, 100));
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(fail(&brake, a, "ann").is_ok());
            assert!(fail(&brake, a, "ann").is_ok());
            assert!(brake.begin(a, "ann").unwrap().finish(true).is_ok());
        }
    }

    #[test]
    fn remembered_passwords_pass_until_guessing_goes_on() {
        let brake = Brake::new(settings(2, 100));
        let a = ip("192.0.2.1");
        assert!(fail(&brake, a, "ann").is_ok());
        assert!(fail(&brake, a, "ann").is_err());
        assert!(brake.remembered(a, "ann").is_ok());
        assert!(brake.check(a, "ann").is_err(), "a guess during the pause");
        assert!(brake.remembered(a, "ann").is_ok());
        assert!(brake.check(a, "ann").is_err(), "another one");
        assert!(
            brake.remembered(a, "ann").is_err(),
            "guessing went on: remembered passwords wait too"
        );
        assert!(brake.remembered(a, "bob").is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(fail(&brake, a, "ann").is_ok());
        assert!(
            brake.remembered(a, "ann").is_ok(),
            "a remembered login clears"
        );
        assert!(
            fail(&brake, a, "ann").is_ok(),
            "so this is a first failure again"
        );
        assert!(brake.remembered(a, "ann").is_ok());
        assert!(brake.check(a, "ann").is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let brake = Brake::new(settings(2, 100));
        assert!(fail(&brake, ip("2001:db8:1:2::1"), "ann").is_ok());
        assert!(fail(&brake, ip("2001:db8:1:2::ffff"), "ann").is_err());
        assert!(brake.begin(ip("2001:db8:1:2:abcd::9"), "ann").is_err());
        assert!(brake.begin(ip("2001:db8:1:3::1"), "ann").is_ok());
    }

    #[test]
    fn disabled() {
        let brake = Brake::new(settings(0, 0));
        let a = ip("192.0.2.1");
        for _ in 0..100 {
            assert!(fail(&brake, a, "ann").is_ok());
        }
        assert!(brake.begin(a, "ann").is_ok());
        assert!(brake.check(a, "ann").is_ok());
    }

    #[test]
    fn attempts_in_flight_count() {
        let brake = Brake::new(settings(3, 100));
        let a = ip("192.0.2.1");
        let mut flying: Vec<Attempt<'_>> = (0..3).map(|_| brake.begin(a, "ann").unwrap()).collect();
        assert!(
            brake.begin(a, "ann").is_err(),
            "a fourth parallel guess waits"
        );
        assert!(flying.pop().unwrap().finish(true).is_ok());
        let abandoned = brake.begin(a, "ann").expect("a success frees its slot");
        drop(abandoned);
        flying.push(
            brake
                .begin(a, "ann")
                .expect("an abandoned attempt frees its slot"),
        );
        assert!(flying.pop().unwrap().finish(false).is_ok());
        assert!(flying.pop().unwrap().finish(false).is_ok());
        let third = flying.pop().unwrap();
        assert!(
            third.finish(false).is_err(),
            "the third failure engages the brake"
        );
        assert!(brake.begin(a, "ann").is_err());
    }
}
