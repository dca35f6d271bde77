//! larder-dispatch: `larder dispatch`, the content-aware front-end of a Larder cluster.
//!
//! A thread-per-core HTTP/1.1 proxy: every shard accepts on its own `SO_REUSEPORT` listener and, for each
//! request — also on a persistent client connection — asks one shared LARD-family policy (`larder-lard`) which
//! back-end serves the request's target, forwards the request over a pooled keep-alive connection to it and
//! relays the response through one buffer. Back-ends are any HTTP/1.1 servers (larder nodes, nginx, Python).
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | settings and their limits |
//! | `http` | request/response heads, body framing, the chunked-body scanner |
//! | `balancer` | the shared policy, the back-end table (in-flight counts, weights, external load, health and drain flags), policy swaps, retry budget |
//! | `proxy` | the per-shard data path: accept, exchange, retry, relay |
//! | [`relay`] | timed read/write steps with an owned buffer (shared with a node's cluster forwarding) |
//! | `health` | the active health-check thread |
//! | `dispatcher` | start-up, shutdown, the [`DispatchHandle`] (changes at run time: back-ends, weights, load, drain, policy) |
//!
//! # Limits
//! | limit | default | why |
//! |---|---|---|
//! | back-ends | 0..=256 (`BACKENDS_MAX`), initial or added at run time | front-end of one cluster; the policy scans are O(n) |
//! | request head | 16 KiB (`head_bytes_max`) → 431 | as a server; bounds memory per connection |
//! | header fields | 64 per head → 431 | httparse array |
//! | relay buffer | 32 KiB per client connection | one back-end read, written on unchanged |
//! | response head | ≤ relay buffer (32 KiB) → 502 | a head that does not fit one buffer is treated as malformed |
//! | idle back-end connections | 64 per back-end per shard | bounded pool; extra connections are closed |
//! | pending per back-end | 1,024 (all shards); when every live back-end is full → 503 + `Retry-After: 1` | overflow is an answer, not a queue |
//! | connect timeout | 1 s | a live back-end on a LAN connects in < 1 ms |
//! | back-end timeout | 10 s per head wait / body read or write | slow disks, no hung exchanges |
//! | client idle timeout | 60 s | keep-alive without unbounded idle connections |
//! | retry budget | 20% of requests + 10/s, burst 100 | a failing cluster is not doubled in load |
//! | health interval | 1 s | a returning node gets traffic within about a second |
//! | slow start | 5 s: pending cap ramps 1 → full | a returning node with a cold cache is not flooded |
//!
//! # What is not relayed
//! Request bodies with `Transfer-Encoding` (501), protocol upgrades (the 101 head is relayed, then both
//! connections close), pipelined responses from a back-end (bytes after the response end the back-end
//! connection). Heads are forwarded verbatim: no `Via`, no `X-Forwarded-For`, hop-by-hop headers untouched, so a
//! client's `Connection: close` also ends the pooled back-end connection.
//!
//! The control-plane link (back-ends, drain, weights, load and the policy from `larder.v1.Control`) lives in the
//! `larder` binary (`dispatch_link.rs`) so this crate needs no gRPC stack; it steers the dispatcher only through
//! [`DispatchHandle`]. Not built yet: distributed mode.

mod balancer;
pub mod config;
mod dispatcher;
mod health;
pub mod http;
mod proxy;
pub mod relay;

pub use balancer::{BackendStatus, CountersSnapshot, TableError};
pub use config::{BackendId, DispatchConfig, RetryBudgetConfig};
pub use dispatcher::{DispatchError, DispatchHandle, Dispatcher};
