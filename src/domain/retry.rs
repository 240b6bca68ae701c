//! Retry policies: how many Try attempts, and how long to wait between any two calls.
//!
//! The delay is exponential (computed by `backon`), capped by `maxDelay`, with full jitter: the wait
//! is drawn uniformly from zero to the capped delay, so that many jobs retrying one participant
//! spread out instead of arriving together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};

/// A validated retry policy (docs/api.md, "Retry policy"). Every field is set; missing fields take the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Seconds.
    pub initial_delay: f64,
    /// Seconds.
    pub max_delay: f64,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: 0.1,
            max_delay: 30.0,
            multiplier: 2.0,
        }
    }
}

/// The policy as a client may write it: every field optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicyPatch {
    /// Calls of one operation at most (the limits as `request::check_retry_policy` checks them).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Seconds before the second call.
    #[schema(minimum = 0, maximum = 3600)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<f64>,
    /// Seconds between calls at most; not less than initialDelay.
    #[schema(minimum = 0, maximum = 86400)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<f64>,
    /// How much longer each delay is than the one before.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
}

impl RetryPolicyPatch {
    /// Fields of `self` win over `base`.
    pub fn over(&self, base: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            initial_delay: self.initial_delay.unwrap_or(base.initial_delay),
            max_delay: self.max_delay.unwrap_or(base.max_delay),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
        }
    }
}

impl RetryPolicy {
    /// The capped exponential delay before attempt `attempt + 1`, given that `attempt` calls
    /// (1-based) have been made, before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs_f64(self.initial_delay.max(0.0)))
            .with_max_delay(Duration::from_secs_f64(self.max_delay.max(0.0)))
            .with_factor(self.multiplier as f32)
            .without_max_times()
            .build();
        let n = attempt.saturating_sub(1).min(64) as usize;
        backoff
            .nth(n)
            .unwrap_or(Duration::from_secs_f64(self.max_delay.max(0.0)))
    }

    /// The delay to wait after `attempt` calls: full jitter over [`RetryPolicy::ceiling`], but never
    /// less than a `Retry-After` the participant asked for (itself capped by `maxDelay`).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => {
                let cap = Duration::from_secs_f64(self.max_delay.max(0.0));
                jittered.max(asked.min(cap))
            }
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Duration, b: Duration) -> bool {
        (a.as_secs_f64() - b.as_secs_f64()).abs() < 1e-6
    }

    #[test]
    fn ceiling_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_delay: 0.1,
            max_delay: 1.0,
            multiplier: 2.0,
        };
        assert!(close(p.ceiling(1), Duration::from_millis(100)));
        assert!(close(p.ceiling(2), Duration::from_millis(200)));
        assert!(close(p.ceiling(3), Duration::from_millis(400)));
        assert!(close(p.ceiling(5), Duration::from_secs(1)));
        assert!(close(p.ceiling(500), Duration::from_secs(1)));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(2, None, 0.0), Duration::ZERO);
        assert_eq!(p.delay(2, None, 1.0), p.ceiling(2));
        assert!(close(p.delay(2, None, 0.5), p.ceiling(2) / 2));
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = RetryPolicy {
            max_delay: 5.0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2)), 0.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn patch_overrides_fields() {
        let patch = RetryPolicyPatch {
            max_attempts: Some(5),
            ..Default::default()
        };
        let p = patch.over(RetryPolicy::default());
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.initial_delay, 0.1);
    }
}
