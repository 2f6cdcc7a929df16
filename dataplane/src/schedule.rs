//! When to sync: the pacing that `portico node` and `portico local` share.
//! No IO: the caller says what time it is, sleeps until [`due`], and
//! reports how each sync ended.
//!
//! ```text
//!  changes ────────────────┐
//!  every `full_period` ────┼──> due(now) ──> start(now): full? ──> Proxier::sync ──> finished(ok)
//!  a failure: after a pause ┘     (at most one sync per pause: `min_period`, doubling after each failure)
//! ```
//!
//! A failed sync is tried again after `min_period`, then twice that after
//! each further failure in a row, up to [`MAX_RETRY_PAUSE`]; the proxier
//! makes the retry a full sync.
//!
//! [`due`]: SyncSchedule::due

use std::time::{Duration, Instant};

/// The longest pause between failed syncs (unless `min_period` is longer).
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct SyncSchedule {
    min_period: Duration,
    full_period: Option<Duration>,
    next_full: Option<Instant>,
    last_attempt: Option<Instant>,
    failures: u32,
}

impl SyncSchedule {
    /// At most one sync per `min_period`, and a full one every
    /// `full_period` (none without); the first sync is full and due at
    /// once.
    pub fn new(now: Instant, min_period: Duration, full_period: Option<Duration>) -> Self {
        SyncSchedule {
            min_period,
            full_period,
            next_full: full_period.map(|_| now),
            last_attempt: None,
            failures: 0,
        }
    }

    /// When the next sync is due, given whether something changed since
    /// the last one started: at once, or when the periodic full sync is
    /// due, but not before the pause after the last attempt is over.
    /// `None`: not until something changes. A failed sync is due again.
    pub fn due(&self, now: Instant, changed: bool) -> Option<Instant> {
        let wanted = if changed || self.failures > 0 {
            now
        } else {
            self.next_full?
        };
        Some(match self.last_attempt {
            Some(t) => wanted.max(t + self.pause()),
            None => wanted,
        })
    }

    /// The pause after the last attempt: `min_period`, doubled for each
    /// failed sync in a row after the first, up to [`MAX_RETRY_PAUSE`].
    pub fn pause(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        let backoff = self.min_period.saturating_mul(1 << doublings);
        backoff.min(MAX_RETRY_PAUSE.max(self.min_period))
    }

    /// Failed syncs in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A sync starts now; whether it is the periodic full one.
    pub fn start(&mut self, now: Instant) -> bool {
        self.last_attempt = Some(now);
        let full = self.next_full.is_some_and(|t| now >= t);
        if full {
            self.next_full = self.full_period.map(|p| now + p);
        }
        full
    }

    /// The sync that started last ended, well or not.
    pub fn finished(&mut self, ok: bool) {
        self.failures = if ok { 0 } else { self.failures + 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn changes_are_synced_at_most_once_per_min_period_with_a_periodic_full_sync() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::new(t0, SECOND, Some(60 * SECOND));
        assert_eq!(s.due(t0, true), Some(t0));
        assert!(s.start(t0), "the first sync is full");
        s.finished(true);
        // Nothing changed: the periodic full sync.
        assert_eq!(s.due(t0, false), Some(t0 + 60 * SECOND));
        // A change right after a sync waits for the pause.
        let t1 = t0 + SECOND / 10;
        assert_eq!(s.due(t1, true), Some(t0 + SECOND));
        assert!(!s.start(t0 + SECOND));
        s.finished(true);
        assert!(s.start(t0 + 60 * SECOND));
        assert_eq!(s.due(t0 + 60 * SECOND, false), Some(t0 + 120 * SECOND));
    }

    #[test]
    fn a_failed_sync_is_due_again_after_a_pause_that_doubles_up_to_a_limit() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::new(t0, SECOND, None);
        let mut at = t0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            s.start(at);
            s.finished(false);
            // Due without a change.
            let next = s.due(at, false).unwrap();
            pauses.push((next - at).as_secs());
            at = next;
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(s.failures(), 8);
        s.start(at);
        s.finished(true);
        assert_eq!(s.failures(), 0);
        assert_eq!(s.due(at, false), None, "no periodic sync, no change");
        assert_eq!(s.due(at, true), Some(at + SECOND));
    }
}
