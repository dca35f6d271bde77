//! In-node TCP handoff: an accepted connection (its fd plus the bytes already read from it) moved from the shard
//! that accepted it to the shard that should serve it (LARD's TCP handoff, Aron et al. USENIX '00, inside a node).
//!
//! Handoff protocol (numbered as the code does it):
//! 1. The accepting shard reads some bytes (e.g. a request line) from its `monoio::net::TcpStream` and decides
//!    the owner. It must have no I/O in flight on the stream and no split halves alive.
//! 2. [`Handoff::from_monoio`] detaches the fd from the accepting shard's driver (monoio deregisters it from epoll;
//!    io_uring holds no registration) and wraps it as a `std::net::TcpStream` — the fd is never closed or duplicated.
//!    The already-read bytes travel with it, at most [`ALREADY_READ_BYTES_MAX`].
//! 3. The `Handoff` travels inside the caller's message type over the mesh ([`crate::mesh::ShardMesh::send`]).
//!    If the send fails the message comes back in the error; dropping it closes the connection.
//! 4. The owning shard calls [`Handoff::into_monoio`] with its driver kind (`ShardContext::adopt` does this): the
//!    fd is put in the blocking mode that driver needs (io_uring: blocking, epoll: non-blocking) and registered
//!    with the owning shard's driver. The server then parses `already_read` first, and reads the rest from the
//!    socket — the client sees one connection and never knows it moved.
//!
//! Limits: [`ALREADY_READ_BYTES_MAX`] = 64 KiB of already-read bytes — larger than any request head the server
//! accepts, small enough that a handoff queue of 256 messages stays bounded (16 MiB worst case).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use crate::stats::DriverKind;

/// Most bytes that may travel with a handed-off connection.
pub const ALREADY_READ_BYTES_MAX: usize = 64 * 1024;

/// Errors of a handoff.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{bytes} already-read bytes exceed the handoff limit of {bytes_max}")]
    TooLarge { bytes: usize, bytes_max: usize },
    #[error("adopting a handed-off connection: {0}")]
    Io(#[from] std::io::Error),
}

/// An open TCP connection in transit between shards.
#[derive(Debug)]
pub struct Handoff {
    stream: std::net::TcpStream,
    already_read: Vec<u8>,
    peer: SocketAddr,
}

impl Handoff {
    /// Wraps a std stream; fails if `already_read` is over [`ALREADY_READ_BYTES_MAX`] (the stream is then dropped,
    /// closing the connection).
    pub fn new(
        stream: std::net::TcpStream,
        already_read: Vec<u8>,
        peer: SocketAddr,
    ) -> Result<Self, HandoffError> {
        if already_read.len() > ALREADY_READ_BYTES_MAX {
            return Err(HandoffError::TooLarge {
                bytes: already_read.len(),
                bytes_max: ALREADY_READ_BYTES_MAX,
            });
        }
        Ok(Handoff {
            stream,
            already_read,
            peer,
        })
    }

    /// Detaches a monoio stream from the current shard's driver (protocol step 2).
    ///
    /// # Panics
    /// If another handle to the stream is alive (a split half or an in-flight operation): that is a bug in the
    /// caller (monoio's `into_raw_fd` asserts it).
    pub fn from_monoio(
        stream: monoio::net::TcpStream,
        already_read: Vec<u8>,
        peer: SocketAddr,
    ) -> Result<Self, HandoffError> {
        let fd = stream.into_raw_fd();
        // SAFETY: `into_raw_fd` gave up monoio's ownership of the open socket; we are now its only owner.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        Self::new(stream, already_read, peer)
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Bytes the accepting shard already read from the connection.
    pub fn already_read(&self) -> &[u8] {
        &self.already_read
    }

    /// Registers the connection with the calling shard's driver (protocol step 4). Call on the owning shard.
    pub fn into_monoio(
        self,
        driver: DriverKind,
    ) -> Result<(monoio::net::TcpStream, Vec<u8>, SocketAddr), HandoffError> {
        self.stream.set_nonblocking(driver == DriverKind::Epoll)?;
        let stream = monoio::net::TcpStream::from_std(self.stream)?;
        Ok((stream, self.already_read, self.peer))
    }

    /// The raw parts, for callers that serve the connection outside a shard.
    pub fn into_parts(self) -> (std::net::TcpStream, Vec<u8>, SocketAddr) {
        (self.stream, self.already_read, self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_oversized_already_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let error = Handoff::new(server, vec![0; ALREADY_READ_BYTES_MAX + 1], peer).unwrap_err();
        assert!(matches!(
            error,
            HandoffError::TooLarge {
                bytes,
                bytes_max: ALREADY_READ_BYTES_MAX
            } if bytes == ALREADY_READ_BYTES_MAX + 1
        ));
        drop(client);
    }

    #[test]
    fn keeps_bytes_and_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let handoff = Handoff::new(server, b"GET /".to_vec(), peer).unwrap();
        assert_eq!(handoff.already_read(), b"GET /");
        assert_eq!(handoff.peer(), client.local_addr().unwrap());
    }
}
