//! Randomised waits between retries, shared by the push sinks and the pod watch, so that agents
//! failing together (a backend or API server outage hits every node at once) spread out.

use std::time::Duration;

/// A small xorshift generator: waits need spread, not cryptographic randomness.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and the process id, so agents started together differ.
    pub fn seeded() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
        Jitter((nanos as u64 ^ u64::from(std::process::id())) | 1)
    }

    #[cfg(test)]
    pub fn with_seed(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A uniform wait in `[0, bound)`.
    fn below(&mut self, bound: Duration) -> Duration {
        Duration::from_nanos(self.next_u64() % (bound.as_nanos().min(u64::MAX as u128) as u64).max(1))
    }

    /// Full jitter (a uniform wait between zero and the capped exponential bound), as the AWS
    /// architecture note on backoff recommends.
    pub fn backoff(&mut self, attempt: u32, base: Duration, max: Duration) -> Duration {
        self.below(capped(attempt, base, max))
    }

    /// Equal jitter: between half the capped exponential bound and the bound. Spread like full
    /// jitter, but a server that keeps refusing is asked at most once per half cap.
    pub fn equal_backoff(&mut self, attempt: u32, base: Duration, max: Duration) -> Duration {
        let bound = capped(attempt, base, max);
        bound / 2 + self.below(bound / 2)
    }

    /// A uniform wait in `[period / 2, period)`.
    pub fn around(&mut self, period: Duration) -> Duration {
        period / 2 + self.below(period / 2)
    }
}

fn capped(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_with_full_jitter() {
        let mut jitter = Jitter::with_seed(42);
        for attempt in 1..40 {
            let wait = jitter.backoff(attempt, Duration::from_millis(100), Duration::from_secs(2));
            assert!(wait < Duration::from_secs(2), "{wait:?}");
        }
    }

    #[test]
    fn equal_backoff_grows_to_its_cap_and_stays_there() {
        let mut jitter = Jitter::with_seed(7);
        let (base, max) = (Duration::from_millis(250), Duration::from_secs(2));
        let first = jitter.equal_backoff(0, base, max);
        assert!(first >= base / 2 && first < base, "{first:?}");
        for attempt in 4..40 {
            let wait = jitter.equal_backoff(attempt, base, max);
            assert!(wait >= max / 2 && wait < max, "attempt {attempt}: {wait:?}");
        }
    }
}
