//! Cost of a cache hit with 10,000 cached objects: `ShardCache::lookup` (hash probe + GreedyDual-Size re-ordering
//! in a BTreeMap + Arc clone) beside its baseline, a plain `HashMap` probe + Arc clone of the same objects.
//!
//! Also the cost of a miss, which blocks the shard for one synchronous read: `get_or_load` after `invalidate`, for a
//! 4 KiB and a 256 KiB file in each read mode. `PageCache` re-reads from the kernel's copy; `DropCache` and
//! `DirectOrDropCache` keep no kernel copy, so every miss goes to the device — the price of holding one copy.
//!
//! Run: `cargo bench -p larder-micro --bench cache` (quick check: add `-- --quick`).
//! Paths are requested in a seeded (PCG 0x1a2d) uniformly random order, so the probes miss the CPU cache as a real
//! working set of 10k objects would.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use larder_server::cache::{CacheConfig, CachedObject, Fetched, Lookup, ReadMode, ShardCache};
use rand::Rng;
use rand::SeedableRng;

const OBJECTS: usize = 10_000;
const OBJECT_BYTES: usize = 1024;
const ORDER_LENGTH: usize = 1 << 16;
const SEED: u64 = 0x1a2d;

fn cache_hit(criterion: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let paths: Vec<PathBuf> = (0..OBJECTS)
        .map(|index| {
            let path = dir.path().join(format!("object-{index:05}.html"));
            std::fs::write(&path, vec![b'x'; OBJECT_BYTES]).expect("write object");
            path
        })
        .collect();
    let mut cache = ShardCache::new(CacheConfig::with_budget(64 << 20)).expect("valid config");
    let mut baseline: HashMap<Arc<Path>, Arc<CachedObject>> = HashMap::new();
    for path in &paths {
        let Ok(Fetched::Cached(object)) = cache.get_or_load(path, 0) else {
            panic!("{} should be cached", path.display());
        };
        baseline.insert(Arc::from(path.as_path()), object);
    }
    assert_eq!(cache.len(), OBJECTS, "every object fits the budget");
    let mut rng = rand_pcg::Pcg64::seed_from_u64(SEED);
    let order: Vec<usize> = (0..ORDER_LENGTH)
        .map(|_| rng.random_range(0..OBJECTS))
        .collect();

    let mut group = criterion.benchmark_group("cache_hit_10k");
    let mut next = 0;
    group.bench_function("shard_cache_lookup", |bencher| {
        bencher.iter(|| {
            next = (next + 1) % ORDER_LENGTH;
            match cache.lookup(&paths[order[next]], 1) {
                Lookup::Hit(object) => black_box(object),
                other => panic!("expected a hit, got {other:?}"),
            }
        })
    });
    group.bench_function("baseline_hashmap_get", |bencher| {
        bencher.iter(|| {
            next = (next + 1) % ORDER_LENGTH;
            black_box(Arc::clone(&baseline[paths[order[next]].as_path()]))
        })
    });
    group.finish();
}

fn cache_miss(criterion: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = criterion.benchmark_group("cache_miss");
    for size_bytes in [4096usize, 256 * 1024] {
        let path = dir.path().join(format!("miss-{size_bytes}.bin"));
        std::fs::write(&path, vec![b'm'; size_bytes]).expect("write object");
        std::fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .expect("sync");
        for mode in [
            ReadMode::PageCache,
            ReadMode::DropCache,
            ReadMode::DirectOrDropCache,
        ] {
            let config = CacheConfig {
                read_mode: mode,
                ..CacheConfig::with_budget(64 << 20)
            };
            let mut cache = ShardCache::new(config).expect("valid config");
            group.bench_function(format!("{size_bytes}B_{mode:?}"), |bencher| {
                bencher.iter(|| {
                    cache.invalidate(&path);
                    match cache.get_or_load(&path, 0) {
                        Ok(Fetched::Cached(object)) => black_box(object),
                        other => panic!("expected a load, got {other:?}"),
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, cache_hit, cache_miss);
criterion_main!(benches);
