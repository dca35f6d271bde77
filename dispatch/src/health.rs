//! Active health checks: one plain OS thread (`larder-health`) probes every back-end each
//! `health_interval_ms` with `GET <health_path>` on a fresh connection (connect timeout `connect_timeout_ms`,
//! response timeout `backend_timeout_ms`). A status line with a status below 500 counts as alive. The verdict
//! goes to the shared [`crate::balancer::Balancer`]: a down back-end that answers comes back (its targets are
//! assigned to it again as the policy sees fit), a live one that fails goes down. After each round it publishes
//! how many back-ends take requests (`DispatchHandle::usable_backends`, read by `larder dispatch`'s `/readyz`).
//!
//! Why a blocking thread and not a shard task: probes are a few per second, never on the request path, and a
//! stuck probe must not delay a shard; the thread sleeps on a channel so shutdown wakes it at once.
//!
//! Limits: probes run one after another, so one round takes at most
//! `backends × (connect_timeout_ms + backend_timeout_ms)`; the status line read is bounded to 1 KiB.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use crate::dispatcher::Shared;

/// Most bytes read from a probe's response (the status line is all that matters).
const PROBE_RESPONSE_BYTES_MAX: usize = 1024;

/// One probe; true when the back-end answered with a status below 500.
pub(crate) fn probe(
    addr: SocketAddr,
    path: &str,
    connect_timeout_ms: u64,
    response_timeout_ms: u64,
) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&addr, Duration::from_millis(connect_timeout_ms))
    else {
        return false;
    };
    let timeout = Some(Duration::from_millis(response_timeout_ms));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = [0u8; PROBE_RESPONSE_BYTES_MAX];
    let mut filled = 0;
    while filled < response.len() {
        match stream.read(&mut response[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
        if response[..filled].contains(&b'\n') {
            break;
        }
    }
    let line = &response[..filled];
    let mut parts = line.split(|byte| *byte == b' ');
    let version_ok = parts
        .next()
        .is_some_and(|version| version.starts_with(b"HTTP/1."));
    let status = parts
        .next()
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok());
    version_ok && status.is_some_and(|status| (100..500).contains(&status))
}

/// The checker loop; returns when `stop` is signalled or its sender is dropped.
pub(crate) fn run(shared: Arc<Shared>, stop: Receiver<()>) {
    let config = &shared.config;
    loop {
        match stop.recv_timeout(Duration::from_millis(config.health_interval_ms)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // The table as it is at the start of the round: back-ends added later are checked from the next one,
        // and a verdict about a slot reused meanwhile is ignored (it names the old address).
        let round = shared.balancer().addresses();
        for (backend, addr) in round {
            let alive = probe(
                addr,
                &config.health_path,
                config.connect_timeout_ms,
                config.backend_timeout_ms,
            );
            shared.set_health(backend, addr, !alive, "active check");
        }
        shared.publish_usable_backends();
    }
}
