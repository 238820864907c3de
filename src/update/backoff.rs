//! Pacing replacements of children that keep dying young, so a broken image
//! never becomes a respawn storm. One deadline: automatic updates wait until
//! it passes (a SIGHUP does not).

use std::time::Duration;

use tokio::time::Instant;

/// A child that ran at least this long before crashing resets the back-off.
const RESET_AFTER: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Backoff {
    /// Children that died young in a row.
    streak: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// A child died after running for `ran` (zero: before it was healthy).
    /// Returns how long its replacement waits.
    pub fn crashed(&mut self, ran: Duration) -> Duration {
        self.streak = if ran >= RESET_AFTER {
            0
        } else {
            self.streak + 1
        };
        let delay = delay(self.streak);
        self.until = Some(Instant::now() + delay);
        delay
    }

    /// Until when automatic updates wait, if they do.
    pub fn until(&self) -> Option<Instant> {
        self.until.filter(|&until| until > Instant::now())
    }
}

/// No pause for the first crash, then 1 s, 2 s, 4 s, ... up to 30 s.
fn delay(streak: u32) -> Duration {
    match streak {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let secs: Vec<u64> = (0..10).map(|n| delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[tokio::test]
    async fn young_deaths_add_up_and_a_long_run_resets() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.crashed(Duration::ZERO), Duration::ZERO);
        assert!(backoff.until().is_none(), "no wait after the first crash");
        assert_eq!(
            backoff.crashed(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert!(backoff.until().is_some());
        assert_eq!(backoff.crashed(Duration::ZERO), Duration::from_secs(2));
        assert_eq!(backoff.crashed(RESET_AFTER), Duration::ZERO);
        assert!(backoff.until().is_none());
    }
}
