//! Per-core CPU profiles of a running process: samples the user-space stacks of chosen threads (a node's shard
//! threads) for a few seconds and folds them into flame-graph lines.
//!
//! # Why this crate, and why `perf_event_open`
//! A shard is one pinned thread, so the question an operator asks is "what is *this* thread doing". A
//! per-thread perf event answers exactly that: the kernel samples only the chosen thread, at a fixed rate of
//! its own CPU time, and unwinds its user stack itself (no code runs in a signal handler). Signal-based
//! profilers (`pprof`, `setitimer(ITIMER_PROF)`) sample the whole process and would have to filter by thread,
//! wasting most samples on other threads and running the unwinder inside the shard at every sample. This
//! crate is the only one in the workspace with `perf_event_open`'s `unsafe` (all in [`perf`]), so it is its
//! own small crate: the node, the control plane and the CLI only see [`profile`], [`Profile`] and
//! [`ProfileError`].
//!
//! # One profile ([`profile`])
//! 1. Open one event per thread ([`perf::ThreadEvent::open`]), all disabled; any failure closes them all and
//!    is the answer (nothing half-sampled).
//! 2. Enable them all, then until the duration ends: `poll` their fds for at most [`POLL_INTERVAL_MS`] and
//!    drain every ring into a table of raw call chains (addresses) per thread.
//! 3. Disable them, drain once more, close them.
//! 4. Symbolise each distinct address once, in-process (the `backtrace` crate's DWARF reader, inlined
//!    functions expanded, names demangled without their hash), and fold each chain root first under a first
//!    frame naming its thread (`larder-shard-3`), within [`fold`]'s caps.
//!
//! The calling thread does all of this: it sleeps in `poll` and wakes ~10 times a second, so it costs the
//! sampled threads nothing but the kernel's sampling itself (~1,000 interrupts a second a thread).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`SAMPLE_FREQUENCY_HZ`] | 997 Hz of the thread's CPU time | odd, so it does not beat with 1 ms / 10 ms periodic work; ~1 ms resolution |
//! | duration | [`SECONDS_MIN`]..=[`SECONDS_MAX`] (1..=60) s | a profile ties up the node's one profiling slot; longer adds little |
//! | [`RAW_STACKS_MAX`] | 65,536 distinct address chains | bounds memory (~64 MiB at 127 frames); more are counted as over the cap |
//! | folded stacks, text | see [`fold`]: 20,000 stacks, 3 MiB | under tonic's 4 MiB message limit |
//! | ring buffer | see [`perf`]: 256 KiB a thread | |
//!
//! # Permissions
//! `perf_event_open` on a thread of one's own process needs `kernel.perf_event_paranoid` ≤ 2 for user-space
//! samples (2 is the usual default; Debian's 3 forbids it unless the process has `CAP_PERFMON`, e.g. root).
//! A refusal is [`ProfileError::PermissionDenied`], which names the setting and its current value. Containers
//! often block the syscall with seccomp (Docker's default profile allows it only with `CAP_PERFMON` or
//! `CAP_SYS_ADMIN`); that is a refusal too.
//!
//! # Stacks: frame pointers
//! The kernel unwinds user stacks by frame pointers, and rustc does not promise them on x86-64 Linux in debug
//! or release builds. Measured in a debug build: a loaded shard's samples came back with whole chains
//! (`start_thread` … `shard_body` … `node::conn::serve` … `memcpy`), while a tight loop in a test thread lost
//! its caller (leaf straight to `start_thread`). So a stack is always the sampled function and the functions
//! inlined into it (from debug info), and as many outer frames as the chain holds: enough to see *which* code
//! burns a shard's CPU, not always *who called it*. Release builds (opt-level 3) lose more. Build with `RUSTFLAGS="-C force-frame-pointers=yes"` for whole stacks (about 1% of
//! CPU); frames of the prebuilt standard library may still be skipped. DWARF unwinding
//! (`PERF_SAMPLE_STACK_USER` and an `.eh_frame` unwinder such as `framehop`) would give whole stacks without
//! the flag, at the cost of copying ~16 KiB of stack a sample; it is the next step if operators need it.
//! Symbols come from the binary's own debug info (`debug = 1` in the release profile keeps line tables and
//! inlining information).

pub mod fold;
pub mod perf;

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

pub use fold::{folded_text, FoldedStack, Folder};

/// Samples a second of each thread's CPU time.
pub const SAMPLE_FREQUENCY_HZ: u32 = 997;
/// Shortest and longest profile.
pub const SECONDS_MIN: u32 = 1;
pub const SECONDS_MAX: u32 = 60;
/// Longest sleep of the reader between two drains of the rings.
pub const POLL_INTERVAL_MS: u64 = 100;
/// Most distinct raw call chains kept while sampling.
pub const RAW_STACKS_MAX: usize = 65_536;
/// Where the kernel's sampling permission is set.
pub const PARANOID_PATH: &str = "/proc/sys/kernel/perf_event_paranoid";

/// A thread to sample: its kernel thread id and the first frame of its stacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadTarget {
    pub tid: u32,
    pub label: String,
}

/// A finished profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// The most samples first; their counts sum to `samples`.
    pub stacks: Vec<FoldedStack>,
    pub samples: u64,
    /// Samples the kernel dropped (ring full); not in `stacks`.
    pub samples_lost: u64,
    pub frequency_hz: u32,
    pub duration_ms: u64,
}

/// Why no profile was taken.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("seconds {seconds} is outside {SECONDS_MIN}..={SECONDS_MAX}")]
    InvalidSeconds { seconds: u32 },
    #[error("the kernel does not permit sampling this process (kernel.perf_event_paranoid = {}; user-space samples need <= 2, or CAP_PERFMON): {source}", paranoid_text(*.paranoid))]
    PermissionDenied {
        paranoid: Option<i32>,
        source: io::Error,
    },
    #[error("perf events are not available on this kernel: {0}")]
    Unsupported(io::Error),
    #[error("thread {label} (tid {tid}) is gone")]
    ThreadGone { label: String, tid: u32 },
    #[error("sampling failed: {0}")]
    Io(#[from] io::Error),
}

fn paranoid_text(paranoid: Option<i32>) -> String {
    paranoid.map_or_else(|| "unknown".to_string(), |value| value.to_string())
}

/// The current `kernel.perf_event_paranoid`, if readable.
pub fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string(PARANOID_PATH)
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// The duration of a profile of `seconds`, or why it is refused.
pub fn validate_seconds(seconds: u32) -> Result<Duration, ProfileError> {
    if !(SECONDS_MIN..=SECONDS_MAX).contains(&seconds) {
        return Err(ProfileError::InvalidSeconds { seconds });
    }
    Ok(Duration::from_secs(u64::from(seconds)))
}

fn open_error(target: &ThreadTarget, error: io::Error) -> ProfileError {
    match error.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => ProfileError::PermissionDenied {
            paranoid: perf_event_paranoid(),
            source: error,
        },
        Some(libc::ESRCH) => ProfileError::ThreadGone {
            label: target.label.clone(),
            tid: target.tid,
        },
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            ProfileError::Unsupported(error)
        }
        _ => ProfileError::Io(error),
    }
}

/// Raw chains per thread, under [`RAW_STACKS_MAX`].
#[derive(Default)]
struct RawStacks {
    counts: HashMap<(usize, Vec<u64>), u64>,
    over_cap: u64,
    samples: u64,
    lost: u64,
}

impl RawStacks {
    fn add(&mut self, thread: usize, drained: perf::Drained) {
        self.lost += drained.lost;
        for chain in drained.chains {
            self.samples += 1;
            let key = (thread, chain);
            if let Some(count) = self.counts.get_mut(&key) {
                *count += 1;
            } else if self.counts.len() < RAW_STACKS_MAX {
                self.counts.insert(key, 1);
            } else {
                self.over_cap += 1;
            }
        }
    }
}

/// Samples `threads` for `duration` (steps 1-4 of the module docs) on the calling thread.
pub fn profile(threads: &[ThreadTarget], duration: Duration) -> Result<Profile, ProfileError> {
    // Step 1.
    let mut events = Vec::with_capacity(threads.len());
    for target in threads {
        let event = perf::ThreadEvent::open(target.tid, u64::from(SAMPLE_FREQUENCY_HZ))
            .map_err(|error| open_error(target, error))?;
        events.push(event);
    }
    // Step 2.
    let started = Instant::now();
    for event in &events {
        event.set_enabled(true)?;
    }
    let deadline = started + duration;
    let mut raw = RawStacks::default();
    let mut fds: Vec<libc::pollfd> = events
        .iter()
        .map(|event| libc::pollfd {
            fd: event.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait_ms = deadline
            .duration_since(now)
            .as_millis()
            .min(u128::from(POLL_INTERVAL_MS)) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms.max(1)) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(ProfileError::Io(error));
            }
        }
        drain_all(&mut events, &mut raw);
    }
    // Step 3.
    for event in &events {
        event.set_enabled(false)?;
    }
    drain_all(&mut events, &mut raw);
    drop(events);
    let duration_ms = started.elapsed().as_millis() as u64;
    // Step 4.
    let mut symbols = Symbolizer::default();
    let mut folder = Folder::new();
    let mut counts: Vec<_> = raw.counts.into_iter().collect();
    counts.sort_unstable(); // a deterministic order for the caps
    for ((thread, chain), count) in counts {
        let mut frames = vec![threads[thread].label.clone()];
        for (depth, &address) in chain.iter().enumerate().rev() {
            // A caller's address is its return address, one past the call: look up the call itself.
            let lookup = if depth == 0 {
                address
            } else {
                address.saturating_sub(1)
            };
            frames.extend(symbols.names(lookup).iter().rev().cloned());
        }
        folder.add(&frames, count);
    }
    if raw.over_cap > 0 {
        folder.add(&[fold::OVER_CAP_FRAME], raw.over_cap);
    }
    Ok(Profile {
        stacks: folder.finish(),
        samples: raw.samples,
        samples_lost: raw.lost,
        frequency_hz: SAMPLE_FREQUENCY_HZ,
        duration_ms,
    })
}

fn drain_all(events: &mut [perf::ThreadEvent], raw: &mut RawStacks) {
    for (thread, event) in events.iter_mut().enumerate() {
        let mut drained = perf::Drained::default();
        event.drain(&mut drained);
        raw.add(thread, drained);
    }
}

/// Address → function names, innermost (inlined) first; each address resolved once.
#[derive(Default)]
struct Symbolizer {
    cache: HashMap<u64, Vec<String>>,
}

impl Symbolizer {
    fn names(&mut self, address: u64) -> &[String] {
        self.cache.entry(address).or_insert_with(|| {
            let mut names = Vec::new();
            backtrace::resolve(address as usize as *mut std::ffi::c_void, |symbol| {
                if let Some(name) = symbol.name() {
                    names.push(format!("{name:#}"));
                }
            });
            if names.is_empty() {
                names.push("[unknown]".to_string());
            }
            names
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    use super::*;

    #[test]
    fn seconds_outside_one_to_sixty_are_refused() {
        assert!(matches!(
            validate_seconds(0),
            Err(ProfileError::InvalidSeconds { seconds: 0 })
        ));
        assert!(matches!(
            validate_seconds(61),
            Err(ProfileError::InvalidSeconds { seconds: 61 })
        ));
        assert_eq!(validate_seconds(1).unwrap(), Duration::from_secs(1));
        assert_eq!(validate_seconds(60).unwrap(), Duration::from_secs(60));
    }

    #[test]
    fn a_refusal_names_the_paranoid_setting() {
        let error = open_error(
            &ThreadTarget {
                tid: 1,
                label: "t".to_string(),
            },
            io::Error::from_raw_os_error(libc::EACCES),
        );
        let text = error.to_string();
        assert!(text.contains("kernel.perf_event_paranoid"), "{text}");
    }

    #[inline(never)]
    fn spin_for_the_profile_test(stop: &AtomicBool) -> u64 {
        let mut x = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        x
    }

    /// The whole path against the kernel: a busy thread of this process is sampled and its function is named.
    #[test]
    fn a_busy_thread_is_sampled_with_its_function_named() {
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_sender, tid) = mpsc::channel();
        let spinner = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_sender.send(unsafe { libc::gettid() } as u32).unwrap();
                spin_for_the_profile_test(&stop)
            })
        };
        let target = ThreadTarget {
            tid: tid.recv().unwrap(),
            label: "spinner".to_string(),
        };
        let outcome = profile(std::slice::from_ref(&target), Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        let profile = outcome.expect("perf sampling works on the test machine");
        assert!(
            profile.samples > 100,
            "only {} samples in 1 s at 997 Hz",
            profile.samples
        );
        assert_eq!(
            profile.stacks.iter().map(|s| s.count).sum::<u64>(),
            profile.samples
        );
        assert!(profile
            .stacks
            .iter()
            .all(|s| s.stack.starts_with("spinner;")));
        let named: u64 = profile
            .stacks
            .iter()
            .filter(|s| s.stack.contains("spin_for_the_profile_test"))
            .map(|s| s.count)
            .sum();
        // Without frame pointers (see the module docs) samples in its callees (`Range::next`) lose it, so
        // only its own instructions and what is inlined into it count: a quarter of the samples here.
        assert!(
            named * 10 > profile.samples,
            "the spinning function is in {named} of {} samples:\n{}",
            profile.samples,
            folded_text(&profile.stacks)
        );
    }

    #[test]
    fn a_thread_that_does_not_exist_is_named() {
        let target = ThreadTarget {
            tid: i32::MAX as u32,
            label: "ghost".to_string(),
        };
        let error = profile(&[target], Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(error, ProfileError::ThreadGone { ref label, .. } if label == "ghost"),
            "{error}"
        );
    }
}
