//! The retry budget of a [`Balancer`]: how many requests may be retried on another back-end, so a failing
//! cluster is not doubled in load.
//!
//! # Retry budget
//! Milli-retries: each request adds `retry_ratio_permille`, each millisecond adds `retries_per_second`, the
//! balance is capped at `retry_burst × 1000`; a retry costs 1000. Defaults ([`RetryBudgetConfig::default`]):
//! 200‰ = 20% of requests + 10/s, burst 100.
//!
//! # Invariants
//! - `balance_milli` never exceeds `retry_burst × 1000` (100,000 with the defaults).
//! - Time only refills forward: `refilled_ms` never decreases, so a clock read out of order earns nothing.
//!
//! # Limits
//! | limit | default | why |
//! |---|---|---|
//! | saved retries | 100 (`retry_burst`) | a burst of failures is retried, a failing cluster is not |
//! | earned retries | 20% of requests (`retry_ratio_permille` 200) + 10/s (`retries_per_second`) | retries stay a small share of load |

use super::Balancer;
use crate::config::RetryBudgetConfig;

#[derive(Clone, Copy, Debug)]
pub(super) struct RetryBudget {
    config: RetryBudgetConfig,
    balance_milli: u64,
    refilled_ms: u64,
}

impl RetryBudget {
    pub(super) fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            config,
            balance_milli: u64::from(config.retry_burst) * 1000,
            refilled_ms: 0,
        }
    }

    fn cap_milli(&self) -> u64 {
        u64::from(self.config.retry_burst) * 1000
    }

    pub(super) fn on_request(&mut self) {
        self.balance_milli = (self.balance_milli + u64::from(self.config.retry_ratio_permille))
            .min(self.cap_milli());
    }

    fn try_take(&mut self, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        self.balance_milli = self
            .balance_milli
            .saturating_add(elapsed_ms.saturating_mul(u64::from(self.config.retries_per_second)))
            .min(self.cap_milli());
        if self.balance_milli >= 1000 {
            self.balance_milli -= 1000;
            true
        } else {
            false
        }
    }
}

impl Balancer {
    /// Spends one retry from the budget; false when it is exhausted.
    pub(crate) fn try_retry(&mut self, now_ms: u64) -> bool {
        self.budget.try_take(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_is_twenty_percent_plus_ten_per_second() {
        let config = RetryBudgetConfig {
            retry_ratio_permille: 200,
            retries_per_second: 10,
            retry_burst: 2,
        };
        let mut budget = RetryBudget::new(config);
        assert!(budget.try_take(0));
        assert!(budget.try_take(0));
        assert!(!budget.try_take(0), "burst of 2 spent");
        for _ in 0..5 {
            budget.on_request();
        }
        assert!(budget.try_take(0), "5 requests earn one retry");
        assert!(!budget.try_take(0));
        assert!(budget.try_take(100), "100 ms at 10/s earn one retry");
        assert!(!budget.try_take(100));
    }
}
