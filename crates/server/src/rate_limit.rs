//! Per-key rate limits: a token bucket for each project's write key (events
//! per second) and read key (requests per second), so that one project's
//! flood or runaway dashboard cannot take the writer or the readers from the
//! others. Refused requests get `429` with `Retry-After` and store nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Defaults of `serve --ingest-rate-limit` and `--read-rate-limit`.
pub const DEFAULT_INGEST_EVENTS_PER_S: u32 = 100_000;
pub const DEFAULT_READ_REQUESTS_PER_S: u32 = 100;
/// A bucket holds this many seconds of its rate: short bursts pass.
const BURST_SECONDS: f64 = 2.0;

/// The limits a server enforces; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub ingest_events_per_s: u32,
    pub read_requests_per_s: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            ingest_events_per_s: DEFAULT_INGEST_EVENTS_PER_S,
            read_requests_per_s: DEFAULT_READ_REQUESTS_PER_S,
        }
    }
}

/// Token buckets by project (one per limiter: one for writes, one for reads).
#[derive(Debug)]
pub(crate) struct Limiter {
    per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Limiter {
    pub(crate) fn new(per_s: u32) -> Limiter {
        let per_s = f64::from(per_s);
        Limiter { per_s, burst: per_s * BURST_SECONDS, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `cost` tokens from the project's bucket, or says how long to
    /// wait before they are there. A cost above the burst passes when the
    /// bucket is full (and empties it), so no request is refused forever.
    pub(crate) fn take(&self, project: i64, cost: u64, now: Instant) -> Result<(), Duration> {
        if self.per_s == 0.0 {
            return Ok(());
        }
        let cost = (cost as f64).min(self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(project).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_s).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - bucket.tokens) / self.per_s))
        }
    }
}

impl Limiter {
    /// Gives back tokens taken for a request that was then refused for
    /// another reason (a full write queue): only what was stored counts.
    pub(crate) fn refund(&self, project: i64, cost: u64) {
        if self.per_s == 0.0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(&project) {
            bucket.tokens = (bucket.tokens + (cost as f64).min(self.burst)).min(self.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_per_project() {
        let limiter = Limiter::new(10);
        let start = Instant::now();
        assert!(limiter.take(1, 20, start).is_ok(), "two seconds of burst");
        let wait = limiter.take(1, 5, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert!(limiter.take(2, 20, start).is_ok(), "another project has its own bucket");
        assert!(limiter.take(1, 5, start + Duration::from_millis(500)).is_ok(), "refilled at the rate");
        // A request larger than the burst passes once the bucket is full.
        assert!(limiter.take(1, 1_000, start + Duration::from_secs(10)).is_ok());
        assert!(limiter.take(1, 1, start + Duration::from_secs(10)).is_err());
        assert!(Limiter::new(0).take(1, u64::MAX, start).is_ok(), "0 turns the limit off");
        // A refund makes the tokens of a refused request available again.
        let later = start + Duration::from_secs(20);
        assert!(limiter.take(3, 20, later).is_ok());
        assert!(limiter.take(3, 20, later).is_err());
        limiter.refund(3, 20);
        assert!(limiter.take(3, 20, later).is_ok());
    }
}
