//! How many high-urgency alerts one member may set off.
//!
//! A new `report` or `flag` wakes every manager's phone at once (SPEC §6).
//! Unchecked, one member opening a hundred of them would wake every manager
//! a hundred times. So each member may set off at most `alerts_per_member`
//! alerts in a sliding `alert_window` (5 an hour by default). Past it, the
//! conversations are still created and listed in every manager's inbox, but:
//! the first one over the limit is told to the managers once, at normal
//! urgency, saying more are coming without notifications; the rest queue no
//! notification at all, until the member's alerts within the window are
//! under the limit again. Only alerts actually sent count, so a member who
//! keeps to the limit is never silenced. Kept in memory: a restart forgives.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// What to do with one new report or flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertDecision {
    /// Within the limit: every manager hears it with high urgency.
    Alert,
    /// The first over the limit: one normal-urgency notice says more may come quietly.
    Announce,
    /// Over the limit and already announced: no notification.
    Quiet,
}

/// Above this many tracked members, idle ones are swept.
const SWEEP_THRESHOLD: usize = 10_000;

#[derive(Debug, Default)]
struct MemberAlerts {
    /// Times (ms) of the latest alerts sent, at most `limit` of them.
    sent: VecDeque<u64>,
    /// Whether the current run over the limit has been announced.
    announced: bool,
}

#[derive(Debug)]
pub struct AlertLimiter {
    /// 0: no limit.
    limit: usize,
    window_ms: u64,
    members: HashMap<String, MemberAlerts>,
}

impl AlertLimiter {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            members: HashMap::new(),
        }
    }

    /// Decides one new report or flag by `member` at `now_ms`, and counts it.
    pub fn decide(&mut self, member: &str, now_ms: u64) -> AlertDecision {
        if self.limit == 0 {
            return AlertDecision::Alert;
        }
        let window_ms = self.window_ms;
        if self.members.len() > SWEEP_THRESHOLD {
            self.members.retain(|_, alerts| {
                alerts
                    .sent
                    .back()
                    .is_some_and(|&at| now_ms.saturating_sub(at) < window_ms)
            });
        }
        let alerts = self.members.entry(member.to_string()).or_default();
        while alerts
            .sent
            .front()
            .is_some_and(|&at| now_ms.saturating_sub(at) >= window_ms)
        {
            alerts.sent.pop_front();
        }
        if alerts.sent.len() < self.limit {
            alerts.sent.push_back(now_ms);
            alerts.announced = false;
            AlertDecision::Alert
        } else if !alerts.announced {
            alerts.announced = true;
            AlertDecision::Announce
        } else {
            AlertDecision::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 60 * 60 * 1000;

    fn limiter() -> AlertLimiter {
        AlertLimiter::new(2, Duration::from_millis(HOUR_MS))
    }

    #[test]
    fn past_the_limit_one_announcement_then_quiet() {
        let mut limiter = limiter();
        let decisions: Vec<_> = (0..5).map(|n| limiter.decide("bob", n)).collect();
        use AlertDecision::*;
        assert_eq!(decisions, [Alert, Alert, Announce, Quiet, Quiet]);
    }

    #[test]
    fn alerts_come_back_when_the_earliest_leaves_the_window() {
        let mut limiter = limiter();
        limiter.decide("bob", 0);
        limiter.decide("bob", 10);
        assert_eq!(limiter.decide("bob", 20), AlertDecision::Announce);
        assert_eq!(limiter.decide("bob", HOUR_MS), AlertDecision::Alert);
        // One slot only: the alert at 10 ms is still within the window.
        assert_eq!(limiter.decide("bob", HOUR_MS + 1), AlertDecision::Announce);
    }

    #[test]
    fn quiet_ones_do_not_count_so_a_member_within_the_rate_is_heard() {
        let mut limiter = limiter();
        // One every half hour: always within two an hour.
        for n in 0..10 {
            assert_eq!(limiter.decide("bob", n * HOUR_MS / 2), AlertDecision::Alert);
        }
    }

    #[test]
    fn members_are_limited_separately() {
        let mut limiter = limiter();
        for n in 0..3 {
            limiter.decide("bob", n);
        }
        assert_eq!(limiter.decide("cy", 3), AlertDecision::Alert);
    }

    #[test]
    fn a_limit_of_zero_means_no_limit() {
        let mut limiter = AlertLimiter::new(0, Duration::from_millis(HOUR_MS));
        for n in 0..100 {
            assert_eq!(limiter.decide("bob", n), AlertDecision::Alert);
        }
    }
}
