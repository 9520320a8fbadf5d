//! Token buckets: per destination (requests per second) and per tenant (publishes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` requests per second, bursts up to one second's worth.
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// Starts with one token: a destination's first second is paced like the rest.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            state: Mutex::new((rate.min(1.0), Instant::now())),
        }
    }

    /// Starts with a full second's worth: a new tenant may burst up to its rate at once.
    pub fn full(rate: f64) -> Self {
        Self {
            rate,
            state: Mutex::new((rate.max(1.0), Instant::now())),
        }
    }

    /// Time to wait before the next request may go, taking its token if it may go now.
    pub fn try_take(&self) -> Option<Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.rate.max(1.0));
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - s.0) / self.rate))
        }
    }

    pub async fn acquire(&self) {
        while let Some(wait) = self.try_take() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One bucket per tenant, created on first use.
pub struct TenantLimiter {
    rate: f64,
    buckets: Mutex<HashMap<String, std::sync::Arc<TokenBucket>>>,
}

impl TenantLimiter {
    /// `rate` per second; 0 disables the limit.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when the tenant must slow down.
    pub fn check(&self, tenant: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let bucket = {
            let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(tenant.to_string())
                .or_insert_with(|| std::sync::Arc::new(TokenBucket::full(self.rate)))
                .clone()
        };
        match bucket.try_take() {
            None => Ok(()),
            Some(wait) => Err(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_limiter_refuses_past_the_burst() {
        let l = TenantLimiter::new(3.0);
        let ok = (0..10).filter(|_| l.check("a").is_ok()).count();
        // A full bucket: the first second's worth goes at once, then the limit bites.
        assert!((3..=4).contains(&ok), "{ok}");
        assert!(l.check("b").is_ok(), "tenants have separate buckets");
        assert!(TenantLimiter::new(0.0).check("a").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_spaces_requests() {
        let b = TokenBucket::new(5.0);
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            b.acquire().await;
        }
        // The first token is there at once; ten more need two seconds at 5/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        assert!(took <= Duration::from_millis(2300), "{took:?}");
    }
}
