//! SIGINT/SIGTERM for every long-running subcommand (`serve`, `dispatch`, `control`).
//!
//! Protocol: (1) [`TerminationSignals::block`] blocks both signals in the main thread *before* any other thread
//! (shards, control plane, agent) starts, so they inherit the mask and the kernel delivers the signals only to a
//! thread that waits for them; (2) [`TerminationSignals::wait`] waits in `sigwait` on the main thread; (3) the caller
//! then runs its own graceful shutdown.

/// SIGINT and SIGTERM, blocked in the calling thread and in every thread it starts afterwards.
pub struct TerminationSignals(libc::sigset_t);

impl TerminationSignals {
    /// Step 1: block the signals. Call before starting any thread.
    pub fn block() -> anyhow::Result<TerminationSignals> {
        // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let result = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            anyhow::ensure!(result == 0, "pthread_sigmask failed: {result}");
            Ok(TerminationSignals(set))
        }
    }

    /// Step 2: wait for one of the signals; returns its number (0 if `sigwait` failed, which also means stop).
    pub fn wait(&self) -> i32 {
        let mut signal = 0;
        // SAFETY: the set is initialised and blocked in this thread; sigwait only writes `signal`.
        let result = unsafe { libc::sigwait(&self.0, &mut signal) };
        if result != 0 {
            tracing::warn!(result, "sigwait failed; stopping");
        }
        signal
    }
}
