//! A client-side rate limiter: at most `rate` request starts per second.
//!
//! CloudTrail allows `LookupEvents` 2 requests per second per account and region and
//! throttles beyond that. The SDK's adaptive retry mode slows down only *after*
//! throttling errors; this limiter keeps keyturn under the limit from the first request.
//! Hand-written rather than `governor`: it is one interval gate over tokio's clock (so
//! tests run on paused time), where governor would bring its own clock (quanta) and
//! several crates for a job of twenty lines.

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces request starts at least `1 / rate` seconds apart (no burst), fairly: each
/// caller reserves the next free slot, then sleeps until it.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `rate` requests per second (must be > 0).
    pub fn new(rate: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be > 0");
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(None),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Wait until this caller may start a request.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = match *next {
                Some(t) if t > now => t,
                _ => now,
            };
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_by_the_interval() {
        let limiter = RateLimiter::new(2.0);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            limiter.acquire().await;
            starts.push(start.elapsed());
        }
        let ms: Vec<u128> = starts.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 500, 1000, 1500, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let limiter = Arc::new(RateLimiter::new(2.0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let l = limiter.clone();
            tasks.spawn(async move {
                l.acquire().await;
                start.elapsed().as_millis()
            });
        }
        let mut ms = Vec::new();
        while let Some(r) = tasks.join_next().await {
            ms.push(r.unwrap());
        }
        ms.sort();
        assert_eq!(ms, vec![0, 500, 1000, 1500, 2000, 2500]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_does_not_bank_credit() {
        let limiter = RateLimiter::new(2.0);
        limiter.acquire().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        // After a pause the first request goes at once, the next one still waits.
        assert_eq!(start.elapsed().as_millis(), 500);
    }
}
