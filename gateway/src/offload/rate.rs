//! A token bucket bounding the upload bandwidth of all uploads together.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Limits bytes per second across every upload that shares it (hold it in an
/// `Arc`). Callers reserve bytes before sending them and sleep as long as the
/// bucket is in debt, so a part larger than one second's worth still passes,
/// and later callers wait for it.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may be sent now; negative while earlier reservations are
    /// still being paid for.
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    /// A limiter letting `bytes_per_sec` through, with bursts of up to one
    /// second's worth; 0 means unlimited.
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            bucket: Mutex::new(Bucket {
                tokens: bytes_per_sec as f64,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Self {
        Self::new(0)
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `bytes` from the bucket at time `now` and says how long the
    /// caller must wait before sending them.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let rate = self.bytes_per_sec as f64;
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * rate).min(rate);
        bucket.refilled_at = now.max(bucket.refilled_at);
        bucket.tokens -= bytes as f64;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_reservations_wait_their_share() {
        let limiter = RateLimiter::new(1_000);
        let start = Instant::now();
        assert_eq!(limiter.reserve(1_000, start), Duration::ZERO);
        // The bucket is empty: 500 bytes wait half a second, the next 500 a
        // whole second, as they queue behind the first.
        assert_eq!(limiter.reserve(500, start), Duration::from_millis(500));
        assert_eq!(limiter.reserve(500, start), Duration::from_secs(1));
        // Time pays the debt back.
        let later = start + Duration::from_secs(3);
        assert_eq!(limiter.reserve(1_000, later), Duration::ZERO);
    }

    #[test]
    fn an_idle_bucket_holds_at_most_one_second() {
        let limiter = RateLimiter::new(1_000);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(limiter.reserve(1_000, later), Duration::ZERO);
        assert_eq!(limiter.reserve(1_000, later), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::unlimited();
        let start = Instant::now();
        for _ in 0..100 {
            limiter.acquire(u64::MAX / 2).await;
        }
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
