//! Timed relay I/O on one monoio TCP stream with an owned buffer: the steps the dispatcher's proxy and a node's
//! cluster forwarding (`larder-server`'s `cluster::forward`) share. Each step moves the buffer into the operation
//! and back into the caller's `slot`; after a timeout (which drops the operation) `slot` is left empty and the
//! caller must stop using that connection.

use std::future::Future;
use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Why an I/O step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoFail {
    Timeout,
    Closed,
}

impl From<io::Error> for IoFail {
    fn from(_: io::Error) -> Self {
        IoFail::Closed
    }
}

pub async fn timed<F: Future>(timeout_ms: u64, future: F) -> Result<F::Output, IoFail> {
    monoio::time::timeout(Duration::from_millis(timeout_ms), future)
        .await
        .map_err(|_| IoFail::Timeout)
}

/// Reads into `slot[len..end]` and returns the byte count (0: the peer closed). The buffer goes into the
/// operation and comes back into `slot`; after a timeout (which drops the operation) `slot` is empty and the
/// caller stops using this connection.
pub async fn read_more(
    stream: &mut TcpStream,
    slot: &mut Vec<u8>,
    end: usize,
    timeout_ms: u64,
) -> Result<usize, IoFail> {
    let buf = std::mem::take(slot);
    let start = buf.len();
    let (result, slice) = timed(timeout_ms, stream.read(buf.slice_mut(start..end))).await?;
    *slot = slice.into_inner();
    Ok(result?)
}

/// Writes `slot[from..to]` completely; the buffer comes back into `slot` as in [`read_more`].
pub async fn write_range(
    stream: &mut TcpStream,
    slot: &mut Vec<u8>,
    from: usize,
    to: usize,
    timeout_ms: u64,
) -> Result<(), IoFail> {
    let buf = std::mem::take(slot);
    let (result, slice) = timed(timeout_ms, stream.write_all(buf.slice(from..to))).await?;
    *slot = slice.into_inner();
    result?;
    Ok(())
}
