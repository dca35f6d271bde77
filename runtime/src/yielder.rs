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
//! [`Yielder::fair`] applies the same to a future that yields the usual way (`wake_by_ref(); Pending`), e.g. the
//! container scheduler's run loop: a wake during its own poll is turned into a deferred wake through the bouncer.
//!
//! Limits: the list holds one waker per yielding task between two bouncer runs (each task yields at most once at a
//! time). Before the bouncer first ran (start-up), a yield falls back to the self-wake.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

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

    /// Arranges for `waker` to be woken behind every task that is ready now (what a yield does after `Pending`).
    pub fn defer(&self, waker: &Waker) {
        let mut state = self.state.borrow_mut();
        match state.bouncer.clone() {
            Some(bouncer) => {
                if !state.yielded.iter().any(|w| w.will_wake(waker)) {
                    state.yielded.push(waker.clone());
                }
                drop(state);
                bouncer.wake();
            }
            None => {
                drop(state);
                waker.wake_by_ref();
            }
        }
    }

    /// Wraps a future that yields by waking itself (`wake_by_ref(); Pending`, as loops written for other
    /// runtimes do) so that its self-wakes become real yields: woken during its own poll, it is re-queued
    /// behind the shard's other ready tasks instead of in front of them. Wakes from outside its poll (I/O,
    /// timers, other threads) pass straight through.
    pub fn fair<F: Future>(&self, future: F) -> Fair<F> {
        let relay = Arc::new(Relay {
            polling: AtomicBool::new(false),
            woken_in_poll: AtomicBool::new(false),
            target: Mutex::new(None),
        });
        Fair {
            future: Box::pin(future),
            yielder: self.clone(),
            waker: Waker::from(relay.clone()),
            relay,
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
        self.yielder.defer(cx.waker());
        Poll::Pending
    }
}

/// Forwards wakes to the task's real waker, except during the wrapped future's own poll, where it only notes them.
struct Relay {
    polling: AtomicBool,
    woken_in_poll: AtomicBool,
    target: Mutex<Option<Waker>>,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            // A self-wake (or a remote wake racing the poll): handled as a yield after the poll returns.
            self.woken_in_poll.store(true, Ordering::SeqCst);
            return;
        }
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waker) = target.as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Future of [`Yielder::fair`].
pub struct Fair<F> {
    future: Pin<Box<F>>,
    yielder: Yielder,
    relay: Arc<Relay>,
    waker: Waker,
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        {
            let mut target = this.relay.target.lock().unwrap_or_else(|p| p.into_inner());
            if !target.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *target = Some(cx.waker().clone());
            }
        }
        this.relay.woken_in_poll.store(false, Ordering::SeqCst);
        this.relay.polling.store(true, Ordering::SeqCst);
        let poll = this
            .future
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker));
        this.relay.polling.store(false, Ordering::SeqCst);
        if poll.is_pending() && this.relay.woken_in_poll.swap(false, Ordering::SeqCst) {
            this.yielder.defer(cx.waker());
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    type Log = Rc<RefCell<Vec<String>>>;

    /// Runs task A (built by `make_a`) beside a task B that logs `b0..b2` and yields after each; returns the log.
    fn beside_yielding_b<F>(make_a: impl FnOnce(&Yielder, Log) -> F) -> Vec<String>
    where
        F: Future<Output = ()> + 'static,
    {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        runtime.block_on(async {
            let yielder = Yielder::new();
            monoio::spawn(yielder.clone().bounce());
            // Let the bouncer run once so it has a waker.
            yielder.yield_now().await;
            let log: Log = Rc::new(RefCell::new(Vec::new()));
            let a = monoio::spawn(make_a(&yielder, log.clone()));
            let (b_log, b_yielder) = (log.clone(), yielder.clone());
            let b = monoio::spawn(async move {
                for i in 0..3 {
                    b_log.borrow_mut().push(format!("b{i}"));
                    b_yielder.yield_now().await;
                }
            });
            a.await;
            b.await;
            let entries = log.borrow().clone();
            entries
        })
    }

    /// Regression: with a self-waking yield, task A yielding in a loop ran to completion before task B ran once.
    #[test]
    fn yield_lets_other_ready_tasks_run_first() {
        let order = beside_yielding_b(|yielder, log| {
            let yielder = yielder.clone();
            async move {
                for i in 0..3 {
                    log.borrow_mut().push(format!("a{i}"));
                    yielder.yield_now().await;
                }
            }
        });
        assert_eq!(order, ["a0", "b0", "a1", "b1", "a2", "b2"]);
    }

    /// A self-waking loop wrapped in `fair` alternates with another task instead of running to completion first.
    #[test]
    fn fair_turns_self_wakes_into_yields() {
        let order = beside_yielding_b(|yielder, log| {
            let mut step = 0;
            yielder.fair(std::future::poll_fn(move |cx| {
                log.borrow_mut().push(format!("a{step}"));
                step += 1;
                if step == 3 {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }))
        });
        assert_eq!(order, ["a0", "b0", "a1", "b1", "a2", "b2"]);
    }
}
