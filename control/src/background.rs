//! A background worker: one named thread running a current-thread tokio runtime
//! until its stop flag is raised. The node agent ([`crate::agent`]) and the assign
//! feeder ([`crate::assign_client`]) each run on one, so tokio never runs on a
//! data-plane shard and each of them uses at most one core.
//!
//! # Protocol
//! 1. [`Worker::spawn`] builds the runtime on the caller's thread (so a failure is
//!    an error value there), creates the stop flag (a `watch` channel holding
//!    `false`) and starts the thread, which runs `task(stopped)` to completion.
//! 2. The task watches `stopped` (see `server::stop_requested`) at every wait and
//!    returns once it reads `true`.
//! 3. [`Worker::stop_and_join`] (also run on drop) raises the flag and joins the
//!    thread, once: later calls do nothing. A thread that already ended (a panic
//!    in the caller's code, printed by then) joins at once and reports nothing more.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::sync::watch;

/// A running worker thread; see the module docs.
#[derive(Debug)]
pub(crate) struct Worker {
    /// The stop flag and the thread; `None` once stopped.
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Worker {
    /// Starts the thread `name` running `task` on its own current-thread runtime.
    pub(crate) fn spawn<Task, Run>(name: &str, task: Task) -> std::io::Result<Worker>
    where
        Task: FnOnce(watch::Receiver<bool>) -> Run + Send + 'static,
        Run: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || runtime.block_on(task(stopped)))?;
        Ok(Worker {
            running: Some((stop, thread)),
        })
    }

    /// Raises the stop flag and waits for the thread (step 3 of the module docs).
    pub(crate) fn stop_and_join(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(true);
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
