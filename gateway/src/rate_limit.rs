//! Rate limits: one GCRA limiter per caller (user id, or client IP when anonymous) and one
//! over all traffic, both from `governor`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitConfig;

/// Which limiter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The caller's own limit.
    User,
    /// The limit over all traffic.
    Global,
}

impl Scope {
    /// Name used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Global => "global",
        }
    }
}

/// A refused request: which limit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Which limiter refused it.
    pub scope: Scope,
    /// Whole seconds until a request can pass (at least 1), for `Retry-After`.
    pub retry_after_secs: u64,
}

/// The limiters of one configuration.
pub struct RateLimits {
    config: RateLimitConfig,
    per_user: Option<DefaultKeyedRateLimiter<String>>,
    global: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    /// Limiters for `config` (a rate of 0 switches that limiter off).
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            config: config.clone(),
            per_user: quota(config.per_user_per_second, config.per_user_burst)
                .map(RateLimiter::keyed),
            global: quota(config.global_per_second, config.global_burst).map(RateLimiter::direct),
            clock: DefaultClock::default(),
        }
    }

    /// The configuration these limiters enforce.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Whether any limiter is on.
    pub fn is_active(&self) -> bool {
        self.per_user.is_some() || self.global.is_some()
    }

    /// Admits one request from `key`, or says which limit refused it.
    pub fn check(&self, key: &str) -> Result<(), Limited> {
        if let Some(limiter) = &self.per_user
            && let Err(not_until) = limiter.check_key(&key.to_owned())
        {
            return Err(self.limited(Scope::User, not_until.wait_time_from(self.clock.now())));
        }
        if let Some(limiter) = &self.global
            && let Err(not_until) = limiter.check()
        {
            return Err(self.limited(Scope::Global, not_until.wait_time_from(self.clock.now())));
        }
        Ok(())
    }

    fn limited(&self, scope: Scope, wait: Duration) -> Limited {
        let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Limited {
            scope,
            retry_after_secs: whole.max(1),
        }
    }

    /// Forgets callers whose limit has fully recovered (bounded memory).
    pub fn housekeeping(&self) {
        if let Some(limiter) = &self.per_user {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_per_user_then_globally() {
        let limits = RateLimits::new(&RateLimitConfig {
            per_user_per_second: 1,
            per_user_burst: 2,
            global_per_second: 1,
            global_burst: 3,
        });
        assert!(limits.check("alice").is_ok());
        assert!(limits.check("alice").is_ok());
        let refused = limits.check("alice").unwrap_err();
        assert_eq!(refused.scope, Scope::User);
        assert_eq!(refused.retry_after_secs, 1);
        assert!(limits.check("bob").is_ok());
        assert_eq!(limits.check("carol").unwrap_err().scope, Scope::Global);
    }

    #[test]
    fn zero_switches_a_limiter_off() {
        let limits = RateLimits::new(&RateLimitConfig {
            per_user_per_second: 0,
            per_user_burst: 0,
            global_per_second: 0,
            global_burst: 0,
        });
        for _ in 0..1000 {
            assert!(limits.check("alice").is_ok());
        }
        limits.housekeeping();
    }
}
