//! The brute-force brake: after `attempts` failed logins from one address within `window`,
//! further logins from it are refused for `pause` without being verified. IPv6 clients are
//! counted per /64, since one host usually holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The brake's tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrakeSettings {
    /// Failures that engage the brake (0: never).
    pub attempts: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long an engaged brake refuses.
    pub pause: Duration,
}

impl Default for BrakeSettings {
    fn default() -> Self {
        BrakeSettings {
            attempts: 10,
            window: Duration::from_secs(60),
            pause: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    since: Instant,
    failures: u32,
    /// Attempts being verified right now: they count, so parallel guesses cannot overrun.
    inflight: u32,
    until: Option<Instant>,
}

/// Most tracked addresses; beyond it, stale entries are dropped.
const TRACKED: usize = 65_536;

/// Counts failures per address.
#[derive(Debug)]
pub struct Brake {
    settings: BrakeSettings,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Brake {
    /// A brake with these settings.
    pub fn new(settings: BrakeSettings) -> Brake {
        Brake {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(retry_after)` while the brake is engaged for `ip`.
    pub fn engaged(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let until = entries.get(&bucket(ip))?.until?;
        (until > now).then(|| until - now)
    }

    /// Starts a login attempt from `ip`: `Err(retry_after)` while the brake is engaged, or when
    /// failures plus attempts in flight reach the limit. The attempt counts until it is
    /// finished or dropped (a dropped one, e.g. of a client that went away, counts as nothing).
    pub fn begin(&self, ip: IpAddr) -> Result<Attempt<'_>, Duration> {
        let s = self.settings;
        let attempt = Attempt {
            brake: self,
            ip,
            open: s.attempts > 0,
        };
        if s.attempts == 0 {
            return Ok(attempt);
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= TRACKED {
            entries.retain(|_, e| {
                e.inflight > 0
                    || now.duration_since(e.since) < s.window
                    || e.until.is_some_and(|u| u > now)
            });
        }
        let entry = entries.entry(bucket(ip)).or_insert(Entry {
            since: now,
            failures: 0,
            inflight: 0,
            until: None,
        });
        if let Some(until) = entry.until {
            if until > now {
                return Err(until - now);
            }
            entry.until = None;
        }
        if now.duration_since(entry.since) >= s.window {
            entry.since = now;
            entry.failures = 0;
        }
        if entry.failures + entry.inflight >= s.attempts {
            let mut refused = attempt;
            refused.open = false;
            return Err(Duration::from_secs(1));
        }
        entry.inflight += 1;
        Ok(attempt)
    }

    /// Settles an attempt: `None` for one that was abandoned, else whether it succeeded.
    /// `Err(retry_after)` when this failure engaged the brake.
    fn settle(&self, ip: IpAddr, success: Option<bool>) -> Result<(), Duration> {
        let s = self.settings;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.get_mut(&bucket(ip)) else {
            return Ok(());
        };
        entry.inflight = entry.inflight.saturating_sub(1);
        if success != Some(false) {
            return Ok(());
        }
        entry.failures += 1;
        if entry.failures >= s.attempts {
            entry.until = Some(now + s.pause);
            entry.failures = 0;
            entry.since = now;
            return Err(s.pause);
        }
        Ok(())
    }
}

/// A login attempt in flight; see [`Brake::begin`].
#[must_use]
pub struct Attempt<'a> {
    brake: &'a Brake,
    ip: IpAddr,
    open: bool,
}

impl Attempt<'_> {
    /// Ends the attempt; `Err(retry_after)` when this failure engaged the brake.
    pub fn finish(mut self, success: bool) -> Result<(), Duration> {
        match std::mem::replace(&mut self.open, false) {
            true => self.brake.settle(self.ip, Some(success)),
            false => Ok(()),
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.brake.settle(self.ip, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engages_after_attempts_and_releases_after_pause() {
        let brake = Brake::new(BrakeSettings {
            attempts: 3,
            window: Duration::from_secs(60),
            pause: Duration::from_millis(200),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(fail(&brake, a).is_ok());
        assert!(fail(&brake, a).is_ok());
        assert!(fail(&brake, a).is_err());
        assert!(brake.begin(a).is_err());
        assert!(brake.begin(b).is_ok(), "other addresses are not braked");
        std::thread::sleep(Duration::from_millis(250));
        assert!(brake.begin(a).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let brake = Brake::new(BrakeSettings {
            attempts: 2,
            ..BrakeSettings::default()
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(fail(&brake, ip("2001:db8:1:2::1")).is_ok());
        assert!(fail(&brake, ip("2001:db8:1:2::ffff")).is_err());
        assert!(brake.begin(ip("2001:db8:1:2:abcd::9")).is_err());
        assert!(brake.begin(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn disabled() {
        let brake = Brake::new(BrakeSettings {
            attempts: 0,
            ..BrakeSettings::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            assert!(fail(&brake, a).is_ok());
        }
        assert!(brake.begin(a).is_ok());
    }

    #[test]
    fn attempts_in_flight_count() {
        let brake = Brake::new(BrakeSettings {
            attempts: 3,
            ..BrakeSettings::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mut flying: Vec<Attempt> = (0..3).map(|_| brake.begin(a).unwrap()).collect();
        assert!(brake.begin(a).is_err(), "a fourth parallel guess waits");
        assert!(flying.pop().unwrap().finish(true).is_ok());
        let abandoned = brake.begin(a).expect("a success frees its slot");
        drop(abandoned);
        flying.push(brake.begin(a).expect("an abandoned attempt frees its slot"));
        assert!(flying.pop().unwrap().finish(false).is_ok());
        assert!(flying.pop().unwrap().finish(false).is_ok());
        let third = flying.pop().unwrap();
        assert!(
            third.finish(false).is_err(),
            "the third failure engages the brake"
        );
        assert!(brake.begin(a).is_err());
    }

    fn fail(brake: &Brake, ip: IpAddr) -> Result<(), Duration> {
        brake.begin(ip)?.finish(false)
    }
}
