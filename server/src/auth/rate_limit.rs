//! Counts failed sign-ins per account and per client address in a sliding
//! window. Kept in memory: a restart forgives, which is acceptable for a
//! brake on password guessing (the Argon2 cost is the other brake).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AuthError;
use crate::config::Limits;

/// Above this many tracked keys, idle ones are swept on the next failure.
const SWEEP_THRESHOLD: usize = 10_000;

#[derive(Debug)]
pub struct LoginLimiter {
    window: Duration,
    per_account: FailureLog<String>,
    per_address: FailureLog<IpAddr>,
}

impl LoginLimiter {
    pub fn new(limits: &Limits) -> Self {
        Self {
            window: limits.login_window,
            per_account: FailureLog::new(limits.login_failures_per_account),
            per_address: FailureLog::new(limits.login_failures_per_address),
        }
    }

    pub fn check(
        &self,
        account: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), AuthError> {
        let wait = [
            self.per_account.wait(account, now, self.window),
            address.and_then(|address| self.per_address.wait(&address, now, self.window)),
        ]
        .into_iter()
        .flatten()
        .max();
        match wait {
            Some(wait) => Err(AuthError::TooManyAttempts {
                retry_after_secs: wait.as_secs().max(1),
            }),
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, account: &str, address: Option<IpAddr>, now: Instant) {
        self.per_account
            .record(account.to_string(), now, self.window);
        if let Some(address) = address {
            self.per_address.record(address, now, self.window);
        }
    }

    pub fn forget_account(&self, account: &str) {
        self.per_account.forget(account);
    }
}

#[derive(Debug)]
struct FailureLog<K> {
    limit: usize,
    failures: Mutex<HashMap<K, VecDeque<Instant>>>,
}

impl<K: Eq + Hash + Clone> FailureLog<K> {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, VecDeque<Instant>>> {
        // Timestamps only: a panic elsewhere cannot leave them inconsistent.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until `key` may try again, if it is over the limit now.
    fn wait<Q>(&self, key: &Q, now: Instant, window: Duration) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let mut failures = self.lock();
        let times = failures.get_mut(key)?;
        forget_older_than(times, now, window);
        if times.len() < self.limit {
            return None;
        }
        let oldest_counted = times[times.len() - self.limit];
        Some((oldest_counted + window).saturating_duration_since(now))
    }

    fn record(&self, key: K, now: Instant, window: Duration) {
        let mut failures = self.lock();
        if failures.len() > SWEEP_THRESHOLD {
            failures.retain(|_, times| {
                forget_older_than(times, now, window);
                !times.is_empty()
            });
        }
        let times = failures.entry(key).or_default();
        forget_older_than(times, now, window);
        times.push_back(now);
    }

    fn forget<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.lock().remove(key);
    }
}

fn forget_older_than(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|&time| now.saturating_duration_since(time) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> LoginLimiter {
        LoginLimiter::new(&Limits {
            login_failures_per_account: 3,
            login_failures_per_address: 5,
            login_window: Duration::from_secs(60),
            ..Limits::default()
        })
    }

    #[test]
    fn an_account_is_refused_after_its_failure_limit_until_the_window_passes() {
        let limiter = limiter();
        let start = Instant::now();
        for _ in 0..3 {
            limiter.check("ada", None, start).unwrap();
            limiter.record_failure("ada", None, start);
        }
        let Err(AuthError::TooManyAttempts { retry_after_secs }) =
            limiter.check("ada", None, start)
        else {
            panic!("expected too many attempts");
        };
        assert_eq!(retry_after_secs, 60);
        assert!(limiter.check("bob", None, start).is_ok());
        assert!(
            limiter
                .check("ada", None, start + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn an_address_is_refused_after_failures_across_accounts() {
        let limiter = limiter();
        let now = Instant::now();
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        for account in ["a", "b", "c", "d", "e"] {
            limiter.record_failure(account, Some(address), now);
        }
        assert!(limiter.check("f", Some(address), now).is_err());
        assert!(
            limiter
                .check("f", Some("192.0.2.2".parse().unwrap()), now)
                .is_ok()
        );
    }

    #[test]
    fn a_successful_sign_in_forgets_the_account_failures() {
        let limiter = limiter();
        let now = Instant::now();
        for _ in 0..3 {
            limiter.record_failure("ada", None, now);
        }
        limiter.forget_account("ada");
        assert!(limiter.check("ada", None, now).is_ok());
    }
}
