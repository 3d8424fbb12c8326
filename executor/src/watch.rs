//! The one loop that watches a run in the foreground (`mirador run`, `mirador dev`) until it
//! ends or a signal ends it, and the rate its progress lines print.

use std::time::{Duration, Instant};

use mirador_proto::shutdown;

/// How a watched run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `poll` said it ended.
    Finished,
    /// SIGINT or SIGTERM, and the caller asked to stop watching at once.
    Interrupted,
    /// SIGINT or SIGTERM, and the run did not end within the grace the caller gave.
    GraceExpired,
}

/// Calls `poll` every `tick` until it returns true (the run ended). At SIGINT or SIGTERM
/// `interrupted` is called once: it starts the drain and returns how long to go on
/// watching for the end, or `None` to stop watching at once.
pub async fn watch(
    tick: Duration,
    mut poll: impl AsyncFnMut() -> bool,
    interrupted: impl FnOnce() -> Option<Duration>,
) -> Ending {
    let mut ticker = tokio::time::interval(tick);
    let mut requested = std::pin::pin!(shutdown::requested());
    let mut interrupted = Some(interrupted);
    // Set at the signal: the end of the grace the caller gave.
    let mut drain_until: Option<Instant> = None;
    loop {
        if poll().await {
            return Ending::Finished;
        }
        if drain_until.is_some_and(|until| Instant::now() >= until) {
            return Ending::GraceExpired;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut requested, if interrupted.is_some() => {
                let interrupted = interrupted.take().expect("guarded by the branch");
                match interrupted() {
                    Some(grace) => drain_until = Some(Instant::now() + grace),
                    None => return Ending::Interrupted,
                }
            }
        }
    }
}

/// Events per second between progress lines.
#[derive(Debug)]
pub struct Rate {
    every: Duration,
    last: (Instant, u64),
}

impl Rate {
    /// A line every `every`.
    pub fn every(every: Duration) -> Rate {
        Rate {
            every,
            last: (Instant::now(), 0),
        }
    }

    /// Whether a line is due.
    pub fn due(&self) -> bool {
        self.last.0.elapsed() >= self.every
    }

    /// The rate since the last call, with `count` the total so far.
    pub fn update(&mut self, count: u64) -> f64 {
        let now = Instant::now();
        let seconds = now.duration_since(self.last.0).as_secs_f64().max(1e-9);
        let rate = count.saturating_sub(self.last.1) as f64 / seconds;
        self.last = (now, count);
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watching_ends_when_the_poll_says_so() {
        let mut polls = 0;
        let ending = watch(
            Duration::from_millis(1),
            async || {
                polls += 1;
                polls == 3
            },
            || None,
        )
        .await;
        assert_eq!(ending, Ending::Finished);
        assert_eq!(polls, 3);
    }

    #[test]
    fn the_rate_is_the_count_since_the_last_line_over_the_time() {
        let mut rate = Rate::every(Duration::from_secs(1));
        assert!(!rate.due());
        rate.last.0 -= Duration::from_secs(2);
        assert!(rate.due());
        let per_second = rate.update(1000);
        assert!((400.0..=500.0).contains(&per_second), "{per_second}");
        // A count that went backwards (a restarted partition) is not a negative rate.
        assert_eq!(rate.update(10), 0.0);
    }
}
