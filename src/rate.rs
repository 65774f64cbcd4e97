//! A token bucket: at most a rate a minute, in bursts. Decided on plain
//! instants (tokio's, so paused time drives it in tests).

use tokio::time::Instant;

/// At most `rate` takes a minute, in bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    /// Tokens per second.
    refill: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    /// Full: `burst` takes at once (at least one), then `rate` a minute.
    pub fn per_minute(rate: usize, burst: usize) -> Self {
        let capacity = burst.max(1) as f64;
        TokenBucket {
            capacity,
            refill: rate as f64 / 60.0,
            tokens: capacity,
            at: None,
        }
    }

    /// Takes one token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * self.refill;
            self.tokens = (self.tokens + earned).min(self.capacity);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for something that did not happen.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(60, 3);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0), "the burst is spent");
        assert!(!b.take(t0 + Duration::from_millis(900)));
        assert!(b.take(t0 + Duration::from_millis(1900)), "one a second");
        b.give_back();
        assert!(b.take(t0 + Duration::from_millis(1900)), "given back");
        assert!(!b.take(t0 + Duration::from_millis(1900)));
        // Idle for long: at most the burst again.
        let later = t0 + Duration::from_secs(600);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }
}
