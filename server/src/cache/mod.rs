//! Per-shard object cache (owned by the cache helper; stub so the crate compiles).
