//! larder-runtime: the thread-per-core, shared-nothing runtime under Larder. It knows nothing of HTTP.
//!
//! A node runs one *shard* per selected CPU: a pinned OS thread running its own monoio runtime (io_uring, or
//! epoll where io_uring is unavailable). A shard owns, and shares with no other shard, its I/O ring, its timer
//! wheel, its resource-container scheduler and its statistics. Shards talk only through the bounded mesh.
//!
//! | module | owns |
//! |---|---|
//! | [`topology`] | CPUs, cores, packages, NUMA nodes; shard selection (`all`, `2`, `0-3`); pinning |
//! | [`pool`] | [`ShardPool`]: start-up, the per-shard context, shutdown, panic containment |
//! | [`mesh`] | bounded typed queues shard ↔ shard and control thread → shard, woken by an eventfd per shard |
//! | [`handoff`] | moving an accepted TCP connection (fd + bytes read) to another shard |
//! | [`handover`] | passing the listening sockets to a successor process (binary handover, `SCM_RIGHTS`) |
//! | [`listen`] | one `SO_REUSEPORT` listener per accepting shard on one address |
//! | [`sleep`] | async sleeps and timeouts on the shard's timer wheel |
//! | [`timer`] | the hierarchical timer wheel itself (pure data structure) |
//! | [`container`] | resource containers and the per-shard container scheduler |
//! | [`name`] | the name rule of container names and node ids (1..=128 bytes, a narrow ASCII set) |
//! | [`stats`] | per-shard counters and CPU time, readable from any thread |
//! | [`yielder`] | a yield that really lets the shard's other tasks run (monoio's self-wake does not) |
//!
//! # Using it
//!
//! ```no_run
//! use larder_runtime::{PoolConfig, ShardId, ShardPool, Source};
//!
//! #[derive(Debug)]
//! enum Message {
//!     Hello(u32),
//! }
//!
//! let pool = ShardPool::<Message>::start(PoolConfig::default(), |ctx| async move {
//!     // Runs on every shard's own thread. Stop taking new work once shutdown is requested.
//!     if ctx.shard() == ShardId(0) && ctx.shard_count() > 1 {
//!         ctx.mesh().send(ShardId(1), Message::Hello(7)).await.expect("shard 1 runs");
//!     } else if ctx.shard() == ShardId(1) {
//!         let envelope = ctx.mesh().recv().await;
//!         assert_eq!(envelope.from, Source::Shard(ShardId(0)));
//!     }
//!     ctx.timers().sleep(std::time::Duration::from_millis(1)).await.expect("timer armed");
//! })
//! .expect("shards start");
//! println!("{:?}", pool.stats());
//! pool.shutdown();
//! let report = pool.join().expect("no shard panicked");
//! assert!(report.fully_drained());
//! ```
//!
//! Why its own crate: the data plane (`server/`) and benchmarks build on these pieces, and none of them needs to
//! know about HTTP, LARD or gRPC; keeping them here makes the shard model testable on its own.

mod bell;
pub mod container;
mod fdwait;
pub mod handoff;
pub mod handover;
pub mod listen;
pub mod mesh;
pub mod name;
pub mod pool;
pub mod sleep;
pub mod stats;
pub mod timer;
pub mod topology;
pub mod yielder;

pub use handoff::{Handoff, HandoffError};
pub use mesh::{ControlSender, Envelope, MeshConfig, MeshError, MeshSendError, ShardMesh, Source};
pub use pool::{
    IoDriver, PoolConfig, PoolError, PoolReport, ShardContext, ShardExit, ShardPool, ShutdownHandle,
};
pub use sleep::{ShardTimers, Sleep, TimeoutError};
pub use stats::{DriverKind, ShardLiveness, ShardStats, StatsHandle};
pub use topology::{CpuId, ShardSelection, Topology};
pub use yielder::Yielder;

/// Index of a shard in its pool: `0..shard_count`. Distinct from [`CpuId`] (shard 0 may run on CPU 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl ShardId {
    /// The shard's position as an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}", self.0)
    }
}
