//! Per-shard listening sockets: one `SO_REUSEPORT` listener per accepting shard, all on one address, so the kernel
//! spreads new connections over the shards' own accept queues (no shared accept queue, no thundering herd).
//!
//! Used by every data-plane front (`larder serve`, `larder dispatch`). Limit: the backlog is the caller's named
//! constant; the kernel caps it at `net.core.somaxconn`.

use std::io;
use std::net::{SocketAddr, TcpListener};

use rustix::net::{sockopt, AddressFamily, SocketType};

/// Binds `count` listeners to `addr` with `SO_REUSEADDR` + `SO_REUSEPORT` and `backlog`. Port 0 becomes the first
/// listener's port for all of them; the returned address is the bound one. Nothing stays bound on error.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<(Vec<TcpListener>, SocketAddr)> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = rustix::net::socket(family, SocketType::STREAM, None)?;
        sockopt::set_socket_reuseaddr(&socket, true)?;
        sockopt::set_socket_reuseport(&socket, true)?;
        rustix::net::bind(&socket, &bound)?;
        rustix::net::listen(&socket, backlog)?;
        let listener = TcpListener::from(socket);
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok((listeners, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_the_port_chosen_for_the_first() {
        let (listeners, bound) = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        assert_eq!(listeners.len(), 3);
        assert_ne!(bound.port(), 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr().unwrap(), bound);
        }
    }
}
