//! Sending a large cached body without copying it: `vmsplice` the body's pages into a pipe the connection owns,
//! then `splice` them from the pipe into the socket (IO-Lite's single copy on today's kernel; nginx gets the same
//! effect from `sendfile` on page-cache pages).
//!
//! Owns: the per-connection [`SplicePipe`] (created lazily on the connection's first large response, closed with
//! the connection) and the per-shard [`PipeBudget`] that bounds how many exist.
//!
//! Protocol of one body (after the head went out with `writev`):
//! 1. `vmsplice(pipe, body[handed..], SPLICE_F_NONBLOCK)` without `SPLICE_F_GIFT`: the pipe references the body's
//!    pages, nothing is copied; a short count is fine (the pipe is full), the rest goes on a later turn.
//! 2. `splice(pipe → socket, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)`: the socket references the same pages; the
//!    receiver's copy (loopback or NIC DMA) is the only one.
//! 3. When the socket is full (`EAGAIN`; full = more than `NOTSENT_LOWAT_BYTES`, 16 KiB, not yet sent), wait for
//!    writability through the shard's driver (`POLLOUT`: io_uring `PollAdd` or epoll readiness), at most
//!    `write_timeout_ms` per wait; then go back to 1.
//!
//! Both system calls are issued directly (not through monoio's `splice` op: monoio 0.2.4's `Pipe` keeps its
//! descriptors private, so nothing can `vmsplice` into it). On epoll the socket is already non-blocking; on io_uring
//! it is blocking (io_uring waits for it), so it is switched to non-blocking for the body only (`FIONBIO`, restored
//! on every exit) — no other operation is in flight on the connection meanwhile.
//!
//! Invariants: only [`MappedSlice`]s are spliced (their pages are never written again and never return to
//! `malloc`; `cache::read::Mapping` gives the full argument), so the bytes in flight cannot change even if the
//! object is evicted mid-send; the pipe is empty between responses (a body either drains it completely or the
//! connection is closed); at most `PipeBudget::max` pipes are open per shard.
//!
//! Limits: [`PIPES_PER_SHARD_MAX`] (256) pipes per shard, each asked for [`PIPE_BYTES`] (1 MiB, the default
//! `/proc/sys/fs/pipe-max-size`; a refusal keeps the kernel's 64 KiB): 256 pages of references each, no data of its
//! own. When the budget is spent, bodies go out with `writev` as before. A connection that splices keeps at most
//! [`NOTSENT_LOWAT_BYTES`] (16 KiB) unsent in its socket (`TCP_NOTSENT_LOWAT`, set once on its first spliced body).

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use larder_runtime::DriverKind;
use monoio::net::TcpStream;

use super::shard::Shard;
use crate::cache::MappedSlice;

/// Most splice pipes open at once on one shard (two descriptors each); above it responses use `writev`.
pub const PIPES_PER_SHARD_MAX: usize = 256;

/// Capacity asked for each pipe with `F_SETPIPE_SZ`: a 1 MiB body fits in one `vmsplice`.
pub const PIPE_BYTES: usize = 1 << 20;

/// `TCP_NOTSENT_LOWAT` of a connection that splices: unsent bytes above this make the socket "full", so the shard
/// pushes the body in pieces from its own CPU (see `set_notsent_lowat`). 1 MiB, 16 connections, wrk on the other
/// CPU, epoll, requests/s (larder vs nginx side by side): unset 1,581 / 1,724 vs 2,350 / 2,289; 128 KiB 2,592 /
/// 2,102; 16 KiB 2,576 / 2,429.
pub const NOTSENT_LOWAT_BYTES: usize = 16 * 1024;

/// Counts the splice pipes open on one shard; shared by the shard's connections through `Rc` (one thread).
#[derive(Debug)]
pub(crate) struct PipeBudget {
    open: Cell<usize>,
    max: usize,
    /// Set when the kernel refused `vmsplice`/`splice` outright: no more pipes on this shard.
    disabled: Cell<bool>,
}

impl PipeBudget {
    pub(crate) fn new(max: usize) -> Rc<PipeBudget> {
        Rc::new(PipeBudget {
            open: Cell::new(0),
            max,
            disabled: Cell::new(false),
        })
    }

    /// Pipes open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.get()
    }
}

/// Why no pipe was opened (the response then goes out with `writev`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipeError {
    #[error("{open} splice pipes open on this shard (limit {max})")]
    Exhausted { open: usize, max: usize },
    #[error("splicing is disabled on this shard after the kernel refused it")]
    Disabled,
    #[error("pipe2: {0}")]
    Io(#[from] io::Error),
}

/// Why a body was not (completely) sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The kernel refused the first `vmsplice` or `splice` before any byte moved: send the body with `writev`.
    Unsupported(io::Error),
    /// Failed after the body started (peer gone, write timeout): close the connection.
    Failed,
}

/// One connection's pipe: both ends non-blocking and close-on-exec, counted in its shard's [`PipeBudget`].
#[derive(Debug)]
pub(crate) struct SplicePipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity_bytes: usize,
    budget: Rc<PipeBudget>,
    /// The connection's socket got `TCP_NOTSENT_LOWAT` (once, on its first spliced body).
    socket_tuned: Cell<bool>,
}

impl SplicePipe {
    /// Opens a pipe if the shard's budget allows one.
    pub(crate) fn open(budget: &Rc<PipeBudget>) -> Result<SplicePipe, PipeError> {
        if budget.disabled.get() {
            return Err(PipeError::Disabled);
        }
        let open = budget.open.get();
        if open >= budget.max {
            return Err(PipeError::Exhausted {
                open,
                max: budget.max,
            });
        }
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(PipeError::Io(io::Error::last_os_error()));
        }
        // SAFETY: pipe2 succeeded: both descriptors are new and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int and returns the capacity set.
        let set = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        let capacity_bytes = if set > 0 {
            set as usize
        } else {
            // Refused (e.g. over the user's pipe-user-pages-soft): keep the kernel's size.
            // SAFETY: as above; F_GETPIPE_SZ takes no argument.
            let current = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            usize::try_from(current).unwrap_or(4096).max(4096)
        };
        budget.open.set(open + 1);
        Ok(SplicePipe {
            read,
            write,
            capacity_bytes,
            budget: Rc::clone(budget),
            socket_tuned: Cell::new(false),
        })
    }

    /// Bytes the pipe holds when full.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }
}

impl Drop for SplicePipe {
    fn drop(&mut self) {
        self.budget.open.set(self.budget.open.get() - 1);
    }
}

/// Switches a blocking (io_uring) socket to non-blocking for the body and back on drop.
struct NonBlocking {
    fd: RawFd,
    restore: bool,
}

impl NonBlocking {
    fn set(fd: RawFd, driver: DriverKind) -> io::Result<NonBlocking> {
        let restore = driver == DriverKind::Uring;
        if restore {
            set_nonblocking(fd, true)?;
        }
        Ok(NonBlocking { fd, restore })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if self.restore {
            // A failure leaves the socket non-blocking: io_uring then answers EAGAIN and the connection closes.
            let _ = set_nonblocking(self.fd, false);
        }
    }
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    let mut value = libc::c_int::from(on);
    // SAFETY: FIONBIO reads one int from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd, libc::FIONBIO, &mut value) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps at most [`NOTSENT_LOWAT_BYTES`] unsent in the socket: without it one `splice` queues the whole 1 MiB body,
/// the shard sleeps, and the kernel sends the queue from the ACK path — in softirq on the *client's* CPU (measured:
/// 129 softirq ticks on the wrk CPU in 4 s against nginx's 50, and 0.65–0.75× nginx's bytes/s). With the low-water
/// mark the shard is woken to push each next piece itself. Advisory: a refusal leaves the default.
fn set_notsent_lowat(socket: RawFd) {
    let value = NOTSENT_LOWAT_BYTES as libc::c_int;
    // SAFETY: setsockopt reads one int from the pointer, valid for the call.
    let _ = unsafe {
        libc::setsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Step 1: hands the pages of `bytes` to the pipe; returns how many bytes it took.
fn vmsplice(pipe_write: RawFd, bytes: &[u8]) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: `iov` describes memory valid for reads for the duration of the call; afterwards the kernel holds page
    // references, not pointers (and the pages are a `MappedSlice`'s: never written, never reused by malloc).
    let moved = unsafe { libc::vmsplice(pipe_write, &iov, 1, libc::SPLICE_F_NONBLOCK) };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

/// Step 2: moves up to `len` bytes of page references from the pipe to the socket.
fn splice_out(pipe_read: RawFd, socket: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: no memory is passed; both descriptors are open for the duration of the call.
    let moved = unsafe {
        libc::splice(
            pipe_read,
            std::ptr::null_mut(),
            socket,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

/// Sends `body` on `stream` through `pipe` (protocol steps 1-3); returns the bytes sent (all of them).
pub(crate) async fn send(
    shard: &Shard,
    stream: &TcpStream,
    pipe: &SplicePipe,
    body: &MappedSlice,
) -> Result<u64, SendError> {
    let body: &[u8] = body.bytes();
    let socket = stream.as_raw_fd();
    let timeout = Duration::from_millis(shard.live().config.write_timeout_ms);
    let _nonblocking =
        NonBlocking::set(socket, shard.context.driver()).map_err(SendError::Unsupported)?;
    if !pipe.socket_tuned.replace(true) {
        set_notsent_lowat(socket);
    }
    let mut handed = 0usize;
    let mut sent = 0usize;
    while sent < body.len() {
        if handed < body.len() && handed - sent < pipe.capacity_bytes() {
            match vmsplice(pipe.write.as_raw_fd(), &body[handed..]) {
                Ok(moved) => handed += moved,
                // The pipe is full: drain it first.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if handed == 0 => return Err(SendError::Unsupported(error)),
                Err(error) => {
                    tracing::debug!(shard = shard.index, %error, "vmsplice failed mid-body");
                    return Err(SendError::Failed);
                }
            }
        }
        let in_pipe = handed - sent;
        if in_pipe == 0 {
            // vmsplice said "full" about an empty pipe: no progress is possible.
            return Err(SendError::Failed);
        }
        match splice_out(pipe.read.as_raw_fd(), socket, in_pipe) {
            Ok(0) => return Err(SendError::Failed),
            Ok(moved) => sent += moved,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let ready = shard
                    .context
                    .timers()
                    .timeout(timeout, stream.writable(false))
                    .await;
                if !matches!(ready, Ok(Ok(()))) {
                    return Err(SendError::Failed);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if sent == 0 && is_unsupported(&error) => {
                // Nothing reached the socket; the pipe holds references only and is dropped by the caller.
                return Err(SendError::Unsupported(error));
            }
            Err(error) => {
                tracing::debug!(shard = shard.index, %error, "splice to the socket failed mid-body");
                return Err(SendError::Failed);
            }
        }
    }
    Ok(sent as u64)
}

fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::EPERM)
    )
}

/// Marks the shard as unable to splice (the kernel refused it): later responses use `writev` without trying.
pub(crate) fn disable(budget: &PipeBudget, error: &io::Error) {
    if !budget.disabled.replace(true) {
        tracing::warn!(%error, "vmsplice/splice refused; sending bodies with writev on this shard");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_open_pipes_and_frees_on_drop() {
        let budget = PipeBudget::new(2);
        let first = SplicePipe::open(&budget).unwrap();
        let second = SplicePipe::open(&budget).unwrap();
        assert_eq!(budget.open(), 2);
        assert!(
            first.capacity_bytes() >= 4096,
            "capacity {}",
            first.capacity_bytes()
        );
        match SplicePipe::open(&budget) {
            Err(PipeError::Exhausted { open: 2, max: 2 }) => {}
            other => panic!("third pipe past a budget of 2: {other:?}"),
        }
        drop(first);
        assert_eq!(budget.open(), 1);
        let third = SplicePipe::open(&budget).unwrap();
        assert_eq!(budget.open(), 2);
        drop((second, third));
        assert_eq!(budget.open(), 0);
        disable(&budget, &io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(
            SplicePipe::open(&budget),
            Err(PipeError::Disabled)
        ));
        assert_eq!(budget.open(), 0);
    }

    #[test]
    fn a_pipe_takes_a_mebibyte_or_keeps_the_default() {
        let budget = PipeBudget::new(1);
        let pipe = SplicePipe::open(&budget).unwrap();
        // Root (or a user under pipe-user-pages-soft) gets PIPE_BYTES; otherwise the kernel's 64 KiB default stays.
        assert!(
            pipe.capacity_bytes() == PIPE_BYTES || pipe.capacity_bytes() == 64 * 1024,
            "capacity {}",
            pipe.capacity_bytes()
        );
    }
}
