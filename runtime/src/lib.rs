//! larder-runtime: the thread-per-core, shared-nothing runtime (being built).

pub mod container;
pub mod handoff;
pub mod mesh;
pub mod pool;
pub mod stats;
pub mod timer;
pub mod topology;
