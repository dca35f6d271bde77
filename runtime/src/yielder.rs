//! A real yield for monoio tasks: [`Yielder::yield_now`] puts the calling task at the *back* of the shard's run
//! queue, behind every other ready task.
//!
//! Why this exists: monoio 0.2.4 re-queues a task that wakes itself during its own poll at the *front* of the run
//! queue (`Harness::poll` → `yield_now` → `push_front`). The usual `wake_by_ref(); Pending` yield therefore polls
//! the same task again at once: other ready tasks on the shard do not run until it stops yielding (monoio only
//! leaves the loop after `2 × queue length` polls to let its driver run, then takes the same task first again).
//!
//! How: a per-shard *bouncer* task. A yielding task stores its waker in the yielder's list and wakes the bouncer
//! (a different, idle task, so monoio queues it at the back); when the bouncer runs it wakes the stored wakers —
//! their tasks are idle by then, so they too go to the back. Cost: one extra task poll per yield batch.
//!
//! Limits: the list holds one waker per yielding task between two bouncer runs (each task yields at most once at a
//! time). Before the bouncer first ran (start-up), a yield falls back to the self-wake.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    bouncer: Option<Waker>,
    yielded: Vec<Waker>,
}

/// The shard's yield service; a cheap `Rc` handle.
#[derive(Clone, Default)]
pub struct Yielder {
    state: Rc<RefCell<State>>,
}

impl Yielder {
    /// A yielder; it works once [`Yielder::bounce`] runs as a task of the same runtime.
    pub fn new() -> Self {
        Yielder::default()
    }

    /// Returns `Pending` once, after arranging to be woken behind every task that is ready now.
    pub fn yield_now(&self) -> YieldNow<'_> {
        YieldNow {
            yielder: self,
            yielded: false,
        }
    }

    /// The bouncer task (spawn once per shard). Never returns.
    pub async fn bounce(self) {
        std::future::poll_fn(|cx| {
            let yielded = {
                let mut state = self.state.borrow_mut();
                state.bouncer = Some(cx.waker().clone());
                std::mem::take(&mut state.yielded)
            };
            yielded.into_iter().for_each(Waker::wake);
            Poll::<()>::Pending
        })
        .await
    }
}

impl std::fmt::Debug for Yielder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Yielder")
            .field("yielded", &self.state.borrow().yielded.len())
            .finish()
    }
}

/// Future of [`Yielder::yield_now`].
#[must_use = "a yield does nothing unless awaited"]
pub struct YieldNow<'a> {
    yielder: &'a Yielder,
    yielded: bool,
}

impl Future for YieldNow<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        let mut state = self.yielder.state.borrow_mut();
        match state.bouncer.clone() {
            Some(bouncer) => {
                if !state.yielded.iter().any(|w| w.will_wake(cx.waker())) {
                    state.yielded.push(cx.waker().clone());
                }
                drop(state);
                bouncer.wake();
            }
            None => {
                drop(state);
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Regression: with a self-waking yield, task A yielding in a loop ran 100 times before task B ran once.
    #[test]
    fn yield_lets_other_ready_tasks_run_first() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let order = runtime.block_on(async {
            let yielder = Yielder::new();
            monoio::spawn(yielder.clone().bounce());
            // Let the bouncer run once so it has a waker.
            yielder.yield_now().await;
            let order = Rc::new(RefCell::new(Vec::new()));
            let (a_order, a_yielder) = (order.clone(), yielder.clone());
            let a = monoio::spawn(async move {
                for i in 0..3 {
                    a_order.borrow_mut().push(format!("a{i}"));
                    a_yielder.yield_now().await;
                }
            });
            let (b_order, b_yielder) = (order.clone(), yielder.clone());
            let b = monoio::spawn(async move {
                for i in 0..3 {
                    b_order.borrow_mut().push(format!("b{i}"));
                    b_yielder.yield_now().await;
                }
            });
            a.await;
            b.await;
            let order = order.borrow().clone();
            order
        });
        assert_eq!(order, ["a0", "b0", "a1", "b1", "a2", "b2"]);
    }
}
