//! Brakes on password guessing and sign-up floods, kept in memory (a restart
//! forgives, which is acceptable for a brake; the Argon2 cost is the other).
//!
//! Every attempt is counted **before** its password is verified: [`LoginLimiter::begin`]
//! checks and reserves a slot under one lock, so fifty concurrent guesses
//! cannot all pass a check made before any of them failed. The slot is a
//! failure until the verification says otherwise: a right password forgives
//! it ([`Attempt::succeeded`]), and an attempt that never reached the
//! verification (the hashing pool was full) is given back when dropped.
//!
//! - **Per account**, a backoff rather than a lock: the first
//!   `login_failures_per_account` failures are free; after that each attempt
//!   must wait `login_backoff_base`, doubling with every further failure up
//!   to `login_backoff_max`, and only one attempt at a time is verified. The
//!   owner with the right password gets in after a short wait; a guesser gets
//!   a few guesses an hour. Failures are forgotten `login_window` after the
//!   account's last one.
//! - **Per client address**, `login_failures_per_address` failures in a
//!   sliding `login_window`, across accounts (one address spraying guesses).
//! - **Sign-ups per address**, `signups_per_address` in a sliding
//!   `signup_window` ([`SignupLimiter`]).
//!
//! IPv6 addresses count per /64, the block one home or phone gets.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AuthError;
use crate::config::Limits;

/// Above this many tracked keys, idle ones are swept on the next attempt.
const SWEEP_THRESHOLD: usize = 10_000;

/// Whole seconds to tell a client to wait, never 0.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The key an address is counted under: itself, or its /64 for IPv6.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(Ipv6Addr::new(
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            ))
        }
        v4 => v4,
    }
}

/// Times of recent events per key, each forgotten `window` after it happened.
#[derive(Debug)]
struct SlidingWindow<K> {
    limit: usize,
    window: Duration,
    events: HashMap<K, VecDeque<Instant>>,
}

impl<K: Eq + Hash + Clone> SlidingWindow<K> {
    fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            events: HashMap::new(),
        }
    }

    /// How long until `key` may have another event, if it is at the limit now.
    fn wait(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let window = self.window;
        let times = self.events.get_mut(key)?;
        forget_older_than(times, now, window);
        if times.len() < self.limit {
            return None;
        }
        let oldest_counted = times[times.len() - self.limit];
        Some((oldest_counted + window).saturating_duration_since(now))
    }

    fn record(&mut self, key: K, now: Instant) {
        if self.events.len() > SWEEP_THRESHOLD {
            let window = self.window;
            self.events.retain(|_, times| {
                forget_older_than(times, now, window);
                !times.is_empty()
            });
        }
        self.events.entry(key).or_default().push_back(now);
    }

    /// Takes back one event recorded at `at` (a forgiven or unused attempt).
    fn remove(&mut self, key: &K, at: Instant) {
        if let Some(times) = self.events.get_mut(key) {
            if let Some(index) = times.iter().rposition(|&time| time == at) {
                times.remove(index);
            }
            if times.is_empty() {
                self.events.remove(key);
            }
        }
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

/// One account's recent failures.
#[derive(Debug)]
struct AccountState {
    /// Failures counted, including attempts still being verified.
    failures: usize,
    in_flight: usize,
    /// In backoff: the earliest time the next attempt may start.
    next_allowed: Option<Instant>,
    last_seen: Instant,
}

#[derive(Debug)]
struct LoginState {
    accounts: HashMap<String, AccountState>,
    addresses: SlidingWindow<IpAddr>,
}

#[derive(Debug)]
pub struct LoginLimiter {
    free_failures: usize,
    window: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    state: Mutex<LoginState>,
}

/// A reserved login attempt: counted as a failure until settled. Dropped
/// unsettled (the password was never verified), it is given back.
#[must_use = "an attempt is given back when dropped; settle it after verifying"]
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    account: String,
    address: IpAddr,
    at: Instant,
    settled: bool,
}

impl Attempt<'_> {
    /// The password was wrong (or the account unknown): the failure stands,
    /// and past the free failures the next attempt waits.
    pub fn failed(mut self, now: Instant) {
        self.settled = true;
        self.limiter.settle_failure(&self.account, now);
    }

    /// The password was right: the account's failures are forgiven, and this
    /// attempt no longer counts against the address.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter
            .settle_success(&self.account, self.address, self.at);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.give_back(&self.account, self.address, self.at);
        }
    }
}

impl LoginLimiter {
    pub fn new(limits: &Limits) -> Self {
        Self {
            free_failures: limits.login_failures_per_account,
            window: limits.login_window,
            backoff_base: limits.login_backoff_base,
            backoff_max: limits.login_backoff_max,
            state: Mutex::new(LoginState {
                accounts: HashMap::new(),
                addresses: SlidingWindow::new(
                    limits.login_failures_per_address,
                    limits.login_window,
                ),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoginState> {
        // Counts and times only: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wait after `failures` failures, once past the free ones.
    fn backoff(&self, failures: usize) -> Duration {
        let doublings = failures.saturating_sub(self.free_failures).min(30) as u32;
        self.backoff_base
            .saturating_mul(1_u32 << doublings)
            .min(self.backoff_max)
    }

    /// Checks both limits and, if neither refuses, reserves an attempt for
    /// `account` from `address`, atomically.
    pub fn begin(
        &self,
        account: &str,
        address: IpAddr,
        now: Instant,
    ) -> Result<Attempt<'_>, AuthError> {
        let address = address_key(address);
        let mut state = self.lock();
        if state.accounts.len() > SWEEP_THRESHOLD {
            let window = self.window;
            state.accounts.retain(|_, account| {
                account.in_flight > 0 || now.saturating_duration_since(account.last_seen) < window
            });
        }
        let expired = state.accounts.get(account).is_some_and(|account| {
            account.in_flight == 0
                && now.saturating_duration_since(account.last_seen) >= self.window
        });
        if expired {
            state.accounts.remove(account);
        }
        let account_wait = state.accounts.get(account).and_then(|account| {
            if account.failures < self.free_failures {
                None
            } else if account.in_flight > 0 {
                // One attempt at a time in backoff: its outcome decides the next wait.
                Some(self.backoff(account.failures))
            } else {
                account
                    .next_allowed
                    .map(|next| next.saturating_duration_since(now))
                    .filter(|wait| !wait.is_zero())
            }
        });
        let address_wait = state.addresses.wait(&address, now);
        if let Some(wait) = account_wait.into_iter().chain(address_wait).max() {
            return Err(AuthError::TooManyAttempts {
                retry_after_secs: retry_after_secs(wait),
            });
        }
        let entry = state
            .accounts
            .entry(account.to_string())
            .or_insert(AccountState {
                failures: 0,
                in_flight: 0,
                next_allowed: None,
                last_seen: now,
            });
        entry.failures += 1;
        entry.in_flight += 1;
        entry.last_seen = now;
        state.addresses.record(address, now);
        Ok(Attempt {
            limiter: self,
            account: account.to_string(),
            address,
            at: now,
            settled: false,
        })
    }

    fn settle_failure(&self, account: &str, now: Instant) {
        let mut state = self.lock();
        let Some(entry) = state.accounts.get_mut(account) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.last_seen = now;
        if entry.failures >= self.free_failures {
            let next = now + self.backoff(entry.failures);
            entry.next_allowed = Some(entry.next_allowed.map_or(next, |earlier| earlier.max(next)));
        }
    }

    fn settle_success(&self, account: &str, address: IpAddr, at: Instant) {
        let mut state = self.lock();
        state.addresses.remove(&address, at);
        if let Some(entry) = state.accounts.get_mut(account) {
            // Other attempts still being verified keep their count.
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.failures = entry.in_flight;
            entry.next_allowed = None;
            if entry.in_flight == 0 {
                state.accounts.remove(account);
            }
        }
    }

    fn give_back(&self, account: &str, address: IpAddr, at: Instant) {
        let mut state = self.lock();
        state.addresses.remove(&address, at);
        if let Some(entry) = state.accounts.get_mut(account) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.failures = entry.failures.saturating_sub(1);
            if entry.failures == 0 && entry.in_flight == 0 && entry.next_allowed.is_none() {
                state.accounts.remove(account);
            }
        }
    }
}

/// Sign-ups per client address in a sliding window.
#[derive(Debug)]
pub struct SignupLimiter {
    window: Mutex<SlidingWindow<IpAddr>>,
}

/// A reserved sign-up: it counts once the password is hashed
/// ([`SignupSlot::keep`]); dropped before that, it is given back.
#[must_use = "a sign-up slot is given back when dropped; keep it once the work is done"]
#[derive(Debug)]
pub struct SignupSlot<'a> {
    limiter: &'a SignupLimiter,
    address: IpAddr,
    at: Instant,
    kept: bool,
}

impl SignupSlot<'_> {
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for SignupSlot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.limiter.lock().remove(&self.address, self.at);
        }
    }
}

impl SignupLimiter {
    pub fn new(limits: &Limits) -> Self {
        let limit = match limits.signups_per_address {
            0 => usize::MAX,
            limit => limit,
        };
        Self {
            window: Mutex::new(SlidingWindow::new(limit, limits.signup_window)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlidingWindow<IpAddr>> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn reserve(&self, address: IpAddr, now: Instant) -> Result<SignupSlot<'_>, AuthError> {
        let address = address_key(address);
        let mut window = self.lock();
        if let Some(wait) = window.wait(&address, now) {
            return Err(AuthError::TooManySignups {
                retry_after_secs: retry_after_secs(wait),
            });
        }
        window.record(address, now);
        Ok(SignupSlot {
            limiter: self,
            address,
            at: now,
            kept: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn limiter() -> LoginLimiter {
        limiter_with_address_limit(100)
    }

    fn limiter_with_address_limit(per_address: usize) -> LoginLimiter {
        LoginLimiter::new(&Limits {
            login_failures_per_account: 3,
            login_failures_per_address: per_address,
            login_window: Duration::from_secs(15 * 60),
            login_backoff_base: SECOND,
            login_backoff_max: Duration::from_secs(8),
            ..Limits::default()
        })
    }

    fn home() -> IpAddr {
        "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn retry_after(outcome: Result<Attempt<'_>, AuthError>) -> u64 {
        match outcome {
            Err(AuthError::TooManyAttempts { retry_after_secs }) => retry_after_secs,
            other => panic!("expected too many attempts, got {other:?}"),
        }
    }

    fn fail_times(limiter: &LoginLimiter, account: &str, times: usize, now: Instant) {
        for _ in 0..times {
            limiter
                .begin(account, home(), now)
                .unwrap_or_else(|e| panic!("{e}"))
                .failed(now);
        }
    }

    #[test]
    fn concurrent_attempts_reserve_no_more_than_the_free_failures() {
        let limiter = limiter();
        let now = Instant::now();
        // Fifty attempts begun before any is verified.
        let begun: Vec<_> = (0..50).map(|_| limiter.begin("ada", home(), now)).collect();
        let reserved = begun.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(reserved, 3);
    }

    #[test]
    fn after_the_free_failures_each_attempt_waits_twice_as_long_up_to_the_cap() {
        let limiter = limiter();
        let mut now = Instant::now();
        fail_times(&limiter, "ada", 3, now);
        for expected in [1, 2, 4, 8, 8] {
            assert_eq!(retry_after(limiter.begin("ada", home(), now)), expected);
            now += Duration::from_secs(expected);
            fail_times(&limiter, "ada", 1, now);
        }
    }

    #[test]
    fn the_right_password_gets_in_after_the_backoff() {
        let limiter = limiter();
        let now = Instant::now();
        fail_times(&limiter, "ada", 3, now);
        assert_eq!(retry_after(limiter.begin("ada", home(), now)), 1);
        let later = now + SECOND;
        limiter
            .begin("ada", home(), later)
            .unwrap_or_else(|e| panic!("{e}"))
            .succeeded();
        // Forgiven: the free failures are back.
        fail_times(&limiter, "ada", 3, later);
    }

    #[test]
    fn in_backoff_only_one_attempt_at_a_time_is_verified() {
        let limiter = limiter();
        let now = Instant::now();
        fail_times(&limiter, "ada", 3, now);
        let later = now + Duration::from_secs(2);
        let attempt = limiter.begin("ada", home(), later);
        assert!(attempt.is_ok());
        assert!(limiter.begin("ada", home(), later).is_err());
    }

    #[test]
    fn an_attempt_never_verified_is_given_back() {
        let limiter = limiter();
        let now = Instant::now();
        fail_times(&limiter, "ada", 2, now);
        drop(limiter.begin("ada", home(), now));
        fail_times(&limiter, "ada", 1, now);
        assert!(limiter.begin("ada", home(), now).is_err());
    }

    #[test]
    fn an_accounts_failures_are_forgotten_a_window_after_the_last() {
        let limiter = limiter();
        let now = Instant::now();
        fail_times(&limiter, "ada", 3, now);
        let later = now + Duration::from_secs(15 * 60);
        fail_times(&limiter, "ada", 3, later);
    }

    #[test]
    fn one_accounts_failures_do_not_slow_another() {
        let limiter = limiter();
        let now = Instant::now();
        fail_times(&limiter, "ada", 3, now);
        assert!(
            limiter
                .begin(
                    "bob",
                    "192.0.2.2".parse().unwrap_or_else(|e| panic!("{e}")),
                    now
                )
                .is_ok()
        );
    }

    #[test]
    fn an_address_is_refused_after_failures_across_accounts_until_they_age_out() {
        let limiter = limiter_with_address_limit(5);
        let now = Instant::now();
        for account in ["a", "b", "c", "d", "e"] {
            fail_times(&limiter, account, 1, now);
        }
        assert_eq!(retry_after(limiter.begin("f", home(), now)), 15 * 60);
        let other: IpAddr = "192.0.2.2".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(limiter.begin("f", other, now).is_ok());
        let later = now + Duration::from_secs(15 * 60);
        assert!(limiter.begin("f", home(), later).is_ok());
    }

    #[test]
    fn a_successful_login_does_not_count_against_its_address() {
        let limiter = limiter_with_address_limit(5);
        let now = Instant::now();
        for account in ["a", "b", "c", "d", "e"] {
            limiter
                .begin(account, home(), now)
                .unwrap_or_else(|e| panic!("{e}"))
                .succeeded();
        }
        assert!(limiter.begin("f", home(), now).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_per_64_block() {
        let limiter = limiter_with_address_limit(5);
        let now = Instant::now();
        for (n, account) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let address: IpAddr = format!("2001:db8:1:2::{n}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
            limiter
                .begin(account, address, now)
                .unwrap_or_else(|e| panic!("{e}"))
                .failed(now);
        }
        let same_block: IpAddr = "2001:db8:1:2::99".parse().unwrap_or_else(|e| panic!("{e}"));
        let next_block: IpAddr = "2001:db8:1:3::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(limiter.begin("f", same_block, now).is_err());
        assert!(limiter.begin("f", next_block, now).is_ok());
    }

    fn signups(limit: usize) -> SignupLimiter {
        SignupLimiter::new(&Limits {
            signups_per_address: limit,
            signup_window: Duration::from_secs(3600),
            ..Limits::default()
        })
    }

    #[test]
    fn sign_ups_past_the_limit_wait_for_the_window() {
        let limiter = signups(2);
        let now = Instant::now();
        for _ in 0..2 {
            limiter
                .reserve(home(), now)
                .unwrap_or_else(|e| panic!("{e}"))
                .keep();
        }
        let Err(AuthError::TooManySignups { retry_after_secs }) = limiter.reserve(home(), now)
        else {
            panic!("expected too many sign-ups");
        };
        assert_eq!(retry_after_secs, 3600);
        assert!(
            limiter
                .reserve(home(), now + Duration::from_secs(3600))
                .is_ok()
        );
    }

    #[test]
    fn a_sign_up_slot_not_kept_is_given_back() {
        let limiter = signups(1);
        let now = Instant::now();
        drop(limiter.reserve(home(), now));
        assert!(limiter.reserve(home(), now).is_ok());
    }

    #[test]
    fn no_sign_up_limit_when_it_is_zero() {
        let limiter = signups(0);
        let now = Instant::now();
        for _ in 0..100 {
            limiter
                .reserve(home(), now)
                .unwrap_or_else(|e| panic!("{e}"))
                .keep();
        }
    }
}
