//! An optional per-client rate limit (`--rate-limit N`: queries per second per client IP),
//! for a sidecar bound beyond loopback. Each UDP receive thread keeps its own table, so the
//! kernel's SO_REUSEPORT spreading makes the limit approximate (at most N per thread); the
//! table is bounded and simply forgotten when full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Clients remembered per thread before the table is cleared.
const MAX_CLIENTS: usize = 65_536;

/// A token bucket per client.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    clients: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// `per_second` queries per client, with a burst of as many.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            clients: HashMap::new(),
        }
    }

    /// Whether a query from `client` at `now` is within its budget (and spends it).
    pub fn allow(&mut self, client: IpAddr, now: Instant) -> bool {
        if self.clients.len() >= MAX_CLIENTS && !self.clients.contains_key(&client) {
            self.clients.clear();
        }
        let rate = self.per_second;
        let (tokens, last) = self.clients.entry(client).or_insert((rate, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn allows_the_rate_and_a_burst_then_refuses() {
        let mut limit = RateLimiter::new(10);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        assert_eq!(
            (0..20).filter(|_| limit.allow(a, t)).count(),
            10,
            "a burst of 10"
        );
        assert!(limit.allow(b, t), "another client has its own budget");
        assert!(!limit.allow(a, t + Duration::from_millis(50)));
        assert!(
            limit.allow(a, t + Duration::from_millis(150)),
            "refilled at 10/s"
        );
    }
}
