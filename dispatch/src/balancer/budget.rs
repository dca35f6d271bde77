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

use super::choice::Ticket;
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
    /// The try with `ticket` failed: counts it against its back-end and, when the request `may_retry`
    /// (idempotent, still buffered whole), spends one retry from the budget. True when the request is to be
    /// retried elsewhere (the retry is counted on the failed back-end too).
    pub(crate) fn fail(&mut self, ticket: Ticket, may_retry: bool, now_ms: u64) -> bool {
        let retry = may_retry && self.budget.try_take(now_ms);
        let state = &mut self.backends[ticket.backend.0 as usize];
        // The slot may have been freed and reused since the ticket was finished: count only on its back-end.
        if state.addr == ticket.addr {
            state.failures += 1;
            state.retries += u64::from(retry);
        }
        retry
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

    #[test]
    fn failures_and_retries_are_counted_on_the_back_end_that_failed() {
        let mut balancer = crate::balancer::testing::balancer(2, 100);
        let target = larder_lard::TargetId::from_path("/a");
        let ticket = balancer.begin(target, None, 0, 0).expect("a back-end");
        balancer.finish(ticket, target, 0);
        assert!(
            !balancer.fail(ticket, false, 0),
            "a request that may not be retried is not"
        );
        let retried = (0..150).filter(|_| balancer.fail(ticket, true, 0)).count() as u64;
        assert!(
            (1..150).contains(&retried),
            "the budget bounds retries: {retried}"
        );
        for status in balancer.status() {
            if status.backend == ticket.backend {
                assert_eq!((status.failures, status.retries), (151, retried));
            } else {
                assert_eq!((status.failures, status.retries), (0, 0));
            }
        }
    }
}
