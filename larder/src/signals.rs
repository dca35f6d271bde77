//! SIGINT, SIGTERM and SIGHUP for every long-running subcommand (`serve`, `dispatch`, `control`).
//!
//! Protocol:
//! 1. [`Signals::block`] blocks the three signals in the main thread *before* any other thread (shards,
//!    control plane, agent) starts, so they inherit the mask and the kernel delivers the signals only to a thread
//!    that waits for them.
//! 2. [`Signals::run_until_stopped`] waits in `sigwait` on the main thread: SIGHUP calls the subcommand's reload
//!    and waits again; SIGINT or SIGTERM returns.
//! 3. The caller then runs its own graceful shutdown.
//!
//! A reload runs on the main thread, so two SIGHUPs never overlap; one that arrives during a reload is
//! pending (the kernel keeps one) and starts the next reload when it ends.

/// What the main thread received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGINT or SIGTERM (the signal's number), or a failed `sigwait` (0): stop.
    Stop(i32),
}

/// SIGINT, SIGTERM and SIGHUP, blocked in the calling thread and in every thread it starts afterwards.
pub struct Signals(libc::sigset_t);

impl Signals {
    /// Step 1: block the signals. Call before starting any thread.
    pub fn block() -> anyhow::Result<Signals> {
        // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, signal);
            }
            let result = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            anyhow::ensure!(result == 0, "pthread_sigmask failed: {result}");
            Ok(Signals(set))
        }
    }

    /// Waits for one of the signals.
    pub fn wait(&self) -> Received {
        let mut signal = 0;
        // SAFETY: the set is initialised and blocked in this thread; sigwait only writes `signal`.
        let result = unsafe { libc::sigwait(&self.0, &mut signal) };
        if result != 0 {
            tracing::warn!(result, "sigwait failed; stopping");
            return Received::Stop(0);
        }
        match signal {
            libc::SIGHUP => Received::Reload,
            stop => Received::Stop(stop),
        }
    }

    /// Step 2: `reload` at every SIGHUP, until SIGINT or SIGTERM; returns that signal's number.
    pub fn run_until_stopped(&self, mut reload: impl FnMut()) -> i32 {
        loop {
            match self.wait() {
                Received::Reload => reload(),
                Received::Stop(signal) => return signal,
            }
        }
    }
}
