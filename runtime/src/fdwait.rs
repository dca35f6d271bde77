//! Awaiting a counter fd (eventfd, timerfd) through the shard's own driver, on io_uring and epoll alike.
//!
//! The fd is wrapped as a `monoio::net::UnixStream` only to reach monoio's `readv`, which is a plain `readv(2)`
//! on any fd: io_uring submits `IORING_OP_READV` (the fd must then be *blocking*, so the kernel waits instead of
//! failing with EAGAIN), epoll registers the fd and reads on readiness (the fd must be *non-blocking*). Reading
//! the 8-byte counter resets it. Completions are collected by monoio on every driver turn — including the
//! non-blocking turns a busy shard takes between task batches — so these wake-ups arrive even when the shard
//! never parks (monoio's own timers only fire when it parks).

use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;

use monoio::buf::VecBuf;
use monoio::io::AsyncReadRent;

/// A pending read of the counter; resolves to the reader (for the next read) and the read's result.
pub(crate) type CounterRead = Pin<Box<dyn Future<Output = (CounterFd, std::io::Result<usize>)>>>;

/// A counter fd registered with the current shard's driver.
pub(crate) struct CounterFd {
    stream: monoio::net::UnixStream,
    buffer: Option<VecBuf>,
}

impl CounterFd {
    /// Registers `fd` with the calling thread's monoio driver. `nonblocking`: true for epoll, false for io_uring.
    pub(crate) fn new(fd: OwnedFd, nonblocking: bool) -> std::io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, nonblocking)?;
        // SAFETY: we own `fd`; the std UnixStream takes ownership and is only used through readv (valid on any
        // fd), then closed on drop.
        let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd.into_raw_fd()) };
        Ok(CounterFd {
            stream: monoio::net::UnixStream::from_std(std_stream)?,
            buffer: Some(VecBuf::from(vec![vec![0u8; 8]])),
        })
    }

    /// Reads the counter once, waiting until it is non-zero.
    pub(crate) fn read(mut self) -> CounterRead {
        Box::pin(async move {
            let buffer = self.buffer.take().expect("one read at a time");
            let (result, buffer) = self.stream.readv(buffer).await;
            self.buffer = Some(buffer);
            (self, result)
        })
    }
}

/// Panics on read errors other than the harmless ones (a spurious readiness or a signal).
pub(crate) fn check_read(what: &str, result: std::io::Result<usize>) {
    match result {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
        Err(e) => panic!("reading the shard {what} failed: {e}"),
    }
}
