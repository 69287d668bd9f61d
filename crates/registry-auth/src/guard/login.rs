//! Logging in with a name and a password: HTTP Basic on the API, or at the token endpoint.
//! The password is an htpasswd user's, or a scoped token's secret. Verification is paid once
//! per remembered password (the cache) and once for concurrent logins with the same
//! credentials (a flight); failures go through the brake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::{Guard, Refusal};
use crate::token::records::TokenRecord;
use crate::token::unix_now;
use crate::{Escaped, Identity, Person};

/// What a shared verification found: the identity, or why it failed.
type Outcome = Result<Option<Identity>, Duration>;

impl Guard {
    /// Who `user` with `password` is: an htpasswd user, or a scoped token (its name and
    /// secret). Wrong credentials are 401 (after the brake has counted them), a braked name or
    /// address 429.
    pub async fn login(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<Identity, Refusal> {
        if let Some(basic) = &self.basic {
            // A password verified shortly before is not braked by someone else's failures
            // (see the brake's module documentation for when guessing makes it wait too).
            if basic.cached(user, password) {
                return match self.brake.remembered(client, user) {
                    Ok(()) => Ok(Identity::User(user.to_owned())),
                    Err(retry_after) => Err(Refusal::TooManyAttempts { retry_after }),
                };
            }
        }
        if let Err(retry_after) = self.brake.check(client, user) {
            return Err(Refusal::TooManyAttempts { retry_after });
        }
        // Concurrent logins with the same credentials (a client fetching layers in parallel
        // when the cache has just expired) share one verification and one brake slot.
        let key = self.flights.key(user, password);
        let flight = Flight::join(&self.flights, key);
        let outcome = flight
            .cell
            .get_or_init(|| async {
                let attempt = self.brake.begin(client, user)?;
                let found = self.verify(user, password).await;
                let braked = attempt.finish(found.is_some());
                if found.is_none() {
                    tracing::info!(%client, user = %Escaped(user), "failed login");
                    tracing::info!(target: crate::AUDIT_TARGET, action = "login", result = "failed", who = %Escaped(user), %client, "login failed");
                }
                if let Err(pause) = braked {
                    tracing::warn!(%client, user = %Escaped(user), ?pause, "too many failed logins; braking");
                }
                Ok(found)
            })
            .await
            .clone();
        drop(flight);
        match outcome {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(self.unauthenticated()),
            Err(retry_after) => Err(Refusal::TooManyAttempts { retry_after }),
        }
    }

    /// Who `subject` (of a refresh token) is now: the htpasswd user of that name, else the
    /// scoped token (if it is neither revoked nor expired). `None` once they are gone.
    pub async fn identity_of(&self, subject: &str) -> Option<Identity> {
        if self.basic.as_ref().is_some_and(|b| b.has_user(subject)) {
            return Some(Identity::User(subject.to_owned()));
        }
        let record = self.record(subject).await?;
        self.record_identity(&record)
    }

    /// Who a person signed in with OpenID Connect is now, from what the provider said at
    /// sign-in (a web session holds it): `None` once sign-in no longer admits them (or is
    /// off).
    pub fn person_identity(&self, person: Person) -> Option<Identity> {
        match &self.people {
            Some(admission) if admission.admits(&person) => {
                Some(Identity::Person(Arc::new(person)))
            }
            _ => None,
        }
    }

    async fn record(&self, name: &str) -> Option<TokenRecord> {
        match self.records.as_ref()?.get(name).await {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read token records");
                None
            }
        }
    }

    /// Who a stored token stands for now: a machine with its scopes, or the person who made it
    /// (only while OpenID Connect sign-in is on and still admits them).
    fn record_identity(&self, record: &TokenRecord) -> Option<Identity> {
        let now = unix_now();
        if record.owner.is_none() {
            return record.current(now).map(|t| Identity::Machine(Arc::new(t)));
        }
        let person = record.person(now)?;
        match &self.people {
            Some(admission) if admission.admits(&person) => {
                Some(Identity::Person(Arc::new(person)))
            }
            _ => None,
        }
    }

    /// The htpasswd user, else the scoped token, that these credentials prove.
    async fn verify(&self, user: &str, password: &str) -> Option<Identity> {
        if let Some(basic) = &self.basic {
            if basic.verify_uncached(user, password).await {
                return Some(Identity::User(user.to_owned()));
            }
        }
        let record = self.record(user).await?;
        if record.matches(password) {
            self.record_identity(&record)
        } else {
            None
        }
    }
}

/// Verifications in flight, by a keyed hash of the credentials (random per process: never the
/// password, nor a hash of it anyone could test guesses against).
pub(super) struct Flights(Mutex<HashMap<[u8; 32], Arc<OnceCell<Outcome>>>>, [u8; 32]);

impl Default for Flights {
    fn default() -> Self {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            use std::hash::BuildHasher;
            let random = std::collections::hash_map::RandomState::new();
            key[..8].copy_from_slice(&random.hash_one(std::time::SystemTime::now()).to_be_bytes());
        }
        Flights(Mutex::default(), key)
    }
}

impl Flights {
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(self.1);
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }
}

/// One shared verification; leaves the table when its last waiter is done or gone, so requests
/// cancelled mid-verification leave nothing behind.
struct Flight<'a> {
    table: &'a Flights,
    key: [u8; 32],
    cell: Arc<OnceCell<Outcome>>,
}

impl<'a> Flight<'a> {
    fn join(table: &'a Flights, key: [u8; 32]) -> Flight<'a> {
        let mut t = table.0.lock().unwrap_or_else(|e| e.into_inner());
        let cell = t.entry(key).or_default().clone();
        Flight { table, key, cell }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        let listed = t.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Let go of ours under the lock, so every waiter's count changes under it.
        let ours = std::mem::replace(&mut self.cell, Arc::new(OnceCell::new()));
        let done = ours.initialized();
        drop(ours);
        let idle = listed
            && t.get(&self.key)
                .is_some_and(|c| done || Arc::strong_count(c) == 1);
        if idle {
            t.remove(&self.key);
        }
    }
}
