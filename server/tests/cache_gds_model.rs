//! Differential test: `GdsMap` against a naive GreedyDual-Size (a Vec scanned for the minimum) under random
//! get/insert/remove sequences. Both must make identical eviction decisions, hold the same keys, and never exceed
//! the byte budget or the entry cap. Then the whole `ShardCache` on real files against the same naive model.
//! Proptest prints the failing sequence (and its seed) on failure.

use std::collections::HashMap;

use larder_server::cache::gds::{CostModel, GdsMap, Priority, PRIORITY_SCALE};
use larder_server::cache::{CacheConfig, Fetched, ShardCache};
use proptest::prelude::*;

/// GreedyDual-Size written as plainly as possible: linear scans, nothing clever.
struct NaiveGds {
    bytes_budget: u64,
    entries_max: usize,
    inflation: Priority,
    clock: u64,
    // (key, size, cost, H, time H was set)
    items: Vec<(u32, u64, u64, Priority, u64)>,
}

impl NaiveGds {
    fn h(&self, cost: u64, size: u64) -> Priority {
        self.inflation + Priority::from(cost) * PRIORITY_SCALE / Priority::from(size.max(1))
    }

    fn get(&mut self, key: u32) -> bool {
        let Some(index) = self.items.iter().position(|item| item.0 == key) else {
            return false;
        };
        let (_, size, cost, _, _) = self.items[index];
        self.items[index].3 = self.h(cost, size);
        self.items[index].4 = self.clock;
        self.clock += 1;
        true
    }

    fn remove(&mut self, key: u32) -> bool {
        let before = self.items.len();
        self.items.retain(|item| item.0 != key);
        self.items.len() != before
    }

    fn insert(&mut self, key: u32, size: u64, cost: u64) -> Option<Vec<u32>> {
        if size > self.bytes_budget {
            return None;
        }
        self.remove(key);
        let mut evicted = Vec::new();
        loop {
            let used: u64 = self.items.iter().map(|item| item.1).sum();
            if used + size <= self.bytes_budget && self.items.len() < self.entries_max {
                break;
            }
            let mut victim = 0;
            for (index, item) in self.items.iter().enumerate() {
                let best = &self.items[victim];
                if (item.3, item.4) < (best.3, best.4) {
                    victim = index;
                }
            }
            let removed = self.items.remove(victim);
            self.inflation = removed.3;
            evicted.push(removed.0);
        }
        let h = self.h(cost, size);
        self.items.push((key, size, cost, h, self.clock));
        self.clock += 1;
        Some(evicted)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Get(u32),
    Insert(u32, u64),
    Remove(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..24).prop_map(Op::Get),
        4 => (0u32..24, 1u64..1200).prop_map(|(key, size)| Op::Insert(key, size)),
        1 => (0u32..24).prop_map(Op::Remove),
    ]
}

fn cost_model() -> impl Strategy<Value = CostModel> {
    prop_oneof![
        Just(CostModel::Uniform),
        (0u64..200, 1u64..600).prop_map(|(seek_us, bytes_per_us)| CostModel::DiskTime {
            seek_us,
            bytes_per_us
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn gds_map_matches_naive_gds(
        bytes_budget in 1000u64..5000,
        entries_max in 1usize..12,
        model in cost_model(),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let mut subject: GdsMap<u32, u64> = GdsMap::new(bytes_budget, entries_max);
        let mut naive = NaiveGds { bytes_budget, entries_max, inflation: 0, clock: 0, items: Vec::new() };
        let mut sizes = HashMap::new();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Get(key) => {
                    let hit = subject.touch(&key).map(|value| *value);
                    prop_assert_eq!(hit.is_some(), naive.get(key), "step {}: hit differs for {}", step, key);
                    if let Some(size) = hit {
                        prop_assert_eq!(size, sizes[&key], "step {}: value of {}", step, key);
                    }
                }
                Op::Insert(key, size) => {
                    let mut evicted = Vec::new();
                    let result = subject.insert(key, size, size, model.priority_increment(size), |victim, _| {
                        evicted.push(victim)
                    });
                    let expected = naive.insert(key, size, model.cost(size));
                    prop_assert_eq!(result.is_ok(), expected.is_some(), "step {}: admission of {}", step, key);
                    if let Some(expected) = expected {
                        prop_assert_eq!(&evicted, &expected, "step {}: evictions inserting {} ({} bytes)", step, key, size);
                        sizes.insert(key, size);
                    }
                }
                Op::Remove(key) => {
                    prop_assert_eq!(subject.remove(&key).is_some(), naive.remove(key), "step {}: remove {}", step, key);
                }
            }
            subject.check_invariants();
            prop_assert!(subject.bytes_used() <= bytes_budget);
            prop_assert_eq!(subject.inflation(), naive.inflation, "step {}: inflation", step);
            let mut expected_order: Vec<_> = naive.items.iter().map(|item| (item.3, item.4, item.0)).collect();
            expected_order.sort();
            let expected_keys: Vec<u32> = expected_order.iter().map(|item| item.2).collect();
            let keys: Vec<u32> = subject.keys_in_eviction_order().into_iter().copied().collect();
            prop_assert_eq!(keys, expected_keys, "step {}: eviction order", step);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The shard cache (charging body + path + overhead, cost 1) decides exactly as the naive model fed the same
    /// charged sizes: same hits, misses and evictions, and the same files held after every request.
    #[test]
    fn shard_cache_matches_naive_gds_on_real_files(
        sizes in proptest::collection::vec(0usize..2500, 10),
        requests in proptest::collection::vec(0u32..10, 1..150),
        bytes_budget in 3100u64..8000,
        entries_max in 1usize..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(index, size)| {
                let path = dir.path().join(format!("file-{index}"));
                std::fs::write(&path, vec![b'x'; *size]).unwrap();
                path
            })
            .collect();
        let config = CacheConfig {
            object_bytes_max: 2500,
            entries_max,
            ..CacheConfig::with_budget(bytes_budget)
        };
        let mut cache = ShardCache::new(config).unwrap();
        let mut naive = NaiveGds { bytes_budget, entries_max, inflation: 0, clock: 0, items: Vec::new() };
        let (mut hits, mut misses, mut evictions) = (0u64, 0u64, 0u64);
        for (step, key) in requests.iter().enumerate() {
            let path = &paths[*key as usize];
            if naive.get(*key) {
                hits += 1;
            } else {
                misses += 1;
                let charged = ShardCache::charged_bytes(path, sizes[*key as usize] as u64);
                let evicted = naive.insert(*key, charged, 1).expect("object_bytes_max keeps every file under the budget");
                evictions += evicted.len() as u64;
            }
            let fetched = cache.get_or_load(path, 0).unwrap();
            prop_assert!(matches!(fetched, Fetched::Cached(_)), "step {}: file {} not cached", step, key);
            let counters = cache.counters();
            prop_assert_eq!((counters.hits, counters.misses, counters.evictions), (hits, misses, evictions), "step {}", step);
            for (index, path) in paths.iter().enumerate() {
                let held = naive.items.iter().any(|item| item.0 == index as u32);
                prop_assert_eq!(cache.contains(path), held, "step {}: file {}", step, index);
            }
            prop_assert!(counters.bytes_cached <= bytes_budget);
        }
    }
}
