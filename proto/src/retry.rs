//! The one retry policy of Mirador: exponential backoff, capped, with optional jitter.
//! Loops that retry a call, and the supervisor that schedules a restart, take their delays
//! from a [`Backoff`]; what to retry and for how long stays with the caller.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delays of `initial * 2^attempt`, at most `max`; with jitter, plus up to half again at
/// random, so that many clients that failed together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            jitter: false,
        }
    }

    pub const fn with_jitter(self) -> Self {
        Backoff {
            jitter: true,
            ..self
        }
    }

    /// The delay before retry `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        if !self.jitter {
            return base;
        }
        let half = base.as_nanos() as u64 / 2;
        base + Duration::from_nanos(random_u64() % (half + 1))
    }

    /// A fresh sequence of delays, for one loop.
    pub fn attempts(&self) -> Attempts {
        Attempts {
            policy: *self,
            attempt: 0,
        }
    }
}

/// The delays of one retry loop, growing at each [`Attempts::next_delay`].
#[derive(Clone, Debug)]
pub struct Attempts {
    policy: Backoff,
    attempt: u32,
}

impl Attempts {
    /// The delay to wait before the next retry; the one after is longer.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Retries made so far.
    pub fn count(&self) -> u32 {
        self.attempt
    }
}

fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let mut attempts = policy.attempts();
        let delays: Vec<u64> = (0..7)
            .map(|_| attempts.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(attempts.count(), 7);
        assert_eq!(policy.delay(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn jitter_adds_at_most_half_again() {
        let policy = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter();
        for attempt in 0..6 {
            let base = Backoff {
                jitter: false,
                ..policy
            }
            .delay(attempt);
            let delay = policy.delay(attempt);
            assert!(
                delay >= base && delay <= base + base / 2,
                "{delay:?} for {base:?}"
            );
        }
    }
}
