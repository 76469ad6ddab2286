//! Restart bookkeeping of one HTTP-mode replica: how long to wait before its next start, and
//! when its exits make it crash-looping. Pure logic; the runtime measures and acts.

use std::time::Duration;

/// Runs in a row that end too soon before a replica is called crash-looping. One early exit may
/// be a port race or a dependency still starting; three in a row is a command that does not
/// run, as Kubernetes' CrashLoopBackOff would report it after its first few restarts.
pub(crate) const CRASH_LOOP_AFTER: u32 = 3;

/// One replica's restarts. A run "ends too soon" when it ends before it has run for the longest
/// backoff (whether or not it became ready meanwhile); a run that lasted longer starts the count
/// and the backoff afresh.
#[derive(Debug, Clone)]
pub(crate) struct Restarts {
    min: Duration,
    max: Duration,
    /// The wait before the next start.
    backoff: Duration,
    /// Runs in a row that ended too soon.
    short_runs: u32,
}

/// What to do after a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Next {
    /// Wait this long before the next start.
    pub(crate) delay: Duration,
    /// Runs in a row that ended too soon, this one included.
    pub(crate) short_runs: u32,
    /// Whether the replica is now crash-looping.
    pub(crate) crash_looping: bool,
}

impl Restarts {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            backoff: min,
            short_runs: 0,
        }
    }

    /// A run ended after running for `ran`.
    pub(crate) fn ended(&mut self, ran: Duration) -> Next {
        if ran > self.max {
            self.backoff = self.min;
            self.short_runs = 0;
        }
        self.short_runs = self.short_runs.saturating_add(1);
        let delay = self.backoff;
        self.backoff = self
            .backoff
            .checked_mul(2)
            .map_or(self.max, |b| b.min(self.max));
        Next {
            delay,
            short_runs: self.short_runs,
            crash_looping: self.short_runs >= CRASH_LOOP_AFTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn quick_exits_back_off_to_the_cap_and_crash_loop_from_the_third() {
        let mut r = Restarts::new(MIN, MAX);
        let nexts: Vec<Next> = (0..10).map(|_| r.ended(Duration::ZERO)).collect();
        let delays: Vec<u64> = nexts.iter().map(|n| n.delay.as_millis() as u64).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        let looping: Vec<bool> = nexts.iter().map(|n| n.crash_looping).collect();
        assert_eq!(looping[..4], [false, false, true, true]);
        assert!(looping[2..].iter().all(|l| *l), "it keeps crash-looping");
        assert_eq!(nexts[9].short_runs, 10);
    }

    #[test]
    fn a_run_that_lasted_starts_afresh() {
        let mut r = Restarts::new(MIN, MAX);
        for _ in 0..5 {
            r.ended(Duration::from_secs(1));
        }
        // Ran past the longest backoff: the next start is soon, and one exit is no crash loop.
        let next = r.ended(MAX + Duration::from_secs(1));
        assert_eq!(
            next,
            Next {
                delay: MIN,
                short_runs: 1,
                crash_looping: false
            }
        );
        // A server that becomes ready but dies within seconds, again and again, crash-loops.
        assert!(!r.ended(Duration::from_secs(5)).crash_looping);
        assert!(r.ended(Duration::from_secs(5)).crash_looping);
    }

    #[test]
    fn odd_settings_stay_bounded() {
        let mut r = Restarts::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(r.ended(Duration::ZERO).delay, Duration::from_secs(5));
        assert_eq!(r.ended(Duration::ZERO).delay, Duration::from_secs(5));
        let mut r = Restarts::new(Duration::MAX, Duration::MAX);
        r.ended(Duration::ZERO);
        assert_eq!(r.ended(Duration::ZERO).delay, Duration::MAX);
    }
}
