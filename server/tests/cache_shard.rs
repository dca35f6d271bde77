//! `ShardCache` on real files: exact hit/miss/eviction sequences, revalidation after changes (clock injected as
//! `now_ms`), deletions, directories, too-large files streamed in chunks, and every read mode.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::resident_pages;
use larder_server::cache::{
    CacheConfig, CacheCounters, CacheError, CachedObject, Fetched, Lookup, ReadMode, ShardCache,
};
use proptest::prelude::*;

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    path
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn cached(cache: &mut ShardCache, path: &Path, now_ms: u64) -> Arc<CachedObject> {
    match cache.get_or_load(path, now_ms) {
        Ok(Fetched::Cached(object)) => object,
        other => panic!(
            "expected a cached object for {}, got {other:?}",
            path.display()
        ),
    }
}

fn config(bytes_budget: u64) -> CacheConfig {
    CacheConfig {
        object_bytes_max: bytes_budget / 2,
        ..CacheConfig::with_budget(bytes_budget)
    }
}

#[test]
fn exact_sequence_counts_hits_misses_and_greedy_dual_size_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.bin", &[b'a'; 1000]);
    let b = write(dir.path(), "b.bin", &[b'b'; 2000]);
    let c = write(dir.path(), "c.bin", &[b'c'; 3000]);
    let d = write(dir.path(), "d.bin", &[b'd'; 1000]);
    let charge = |path: &Path, len| ShardCache::charged_bytes(path, len);
    let budget = charge(&a, 1000) + charge(&b, 2000) + charge(&c, 3000);
    let mut cache = ShardCache::new(config(budget)).unwrap();

    // 1-3: three misses fill the budget exactly.
    for path in [&a, &b, &c] {
        cached(&mut cache, path, 0);
    }
    assert_eq!(cache.counters().bytes_cached, budget);
    // 4: a hit; H(a) = 0 + 1/charge(a).
    assert!(matches!(cache.lookup(&a, 1), Lookup::Hit(_)));
    // 5: d needs room. H: a = 1/ca, b = 1/cb, c = 1/cc — c, the largest, goes; L = 1/cc.
    cached(&mut cache, &d, 2);
    assert!(!cache.contains(&c));
    // 6: c again: H(d) = 1/cc + 1/cd is above H(a) = 1/ca > H(b) = 1/cb, so b goes, freeing enough for c.
    cached(&mut cache, &c, 3);
    assert!(!cache.contains(&b));
    assert!(cache.contains(&a) && cache.contains(&c) && cache.contains(&d));
    assert!(matches!(cache.lookup(&b, 4), Lookup::Miss));

    let counters = cache.counters();
    let expected = CacheCounters {
        hits: 1,
        misses: 5,
        evictions: 2,
        bytes_cached: charge(&a, 1000) + charge(&c, 3000) + charge(&d, 1000),
        objects: 3,
        revalidations: 0,
        stale_reloads: 0,
        too_large: 0,
        direct_reads: 0,
        buffered_reads: 5,
    };
    assert_eq!(counters, expected);
}

#[test]
fn changed_file_is_served_stale_only_within_the_interval_then_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "page.html", b"version one");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    set_mtime(&path, t0);
    let mut cache = ShardCache::new(CacheConfig::with_budget(1 << 20)).unwrap();
    assert_eq!(cache.config().revalidate_interval_ms, 1000);

    let first = cached(&mut cache, &path, 10_000);
    assert_eq!(&first.body[..], b"version one");
    assert_eq!(first.meta.mtime_unix_s, 1_700_000_000);
    assert_eq!(
        first.meta.etag,
        format!("\"{:x}-{:x}\"", 1_700_000_000u64, 11)
    );
    assert_eq!(first.meta.content_type, "text/html");
    assert_eq!(first.meta.last_modified, "Tue, 14 Nov 2023 22:13:20 GMT");

    // Same size, new content and mtime.
    fs::write(&path, b"version two").unwrap();
    set_mtime(&path, t0 + Duration::from_secs(5));

    match cache.lookup(&path, 10_999) {
        Lookup::Hit(object) => assert_eq!(
            &object.body[..],
            b"version one",
            "within the interval: old version"
        ),
        other => panic!("expected a hit within the interval, got {other:?}"),
    }
    assert!(matches!(cache.lookup(&path, 11_000), Lookup::Stale));
    let second = cached(&mut cache, &path, 11_000);
    assert_eq!(&second.body[..], b"version two");
    assert_eq!(
        &first.body[..],
        b"version one",
        "a response in flight keeps its version"
    );

    // Unchanged at the next revalidation: same object, no reload.
    let third = cached(&mut cache, &path, 12_500);
    assert!(Arc::ptr_eq(&second, &third));
    let counters = cache.counters();
    assert_eq!((counters.hits, counters.misses), (2, 1));
    assert_eq!((counters.revalidations, counters.stale_reloads), (2, 1));
}

#[test]
fn file_replaced_by_rename_with_equal_size_and_mtime_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let path = write(dir.path(), "app.js", b"old()");
    set_mtime(&path, mtime);
    let mut cache = ShardCache::new(CacheConfig::with_budget(1 << 20)).unwrap();
    cached(&mut cache, &path, 0);

    let staged = write(dir.path(), "app.js.new", b"new()");
    set_mtime(&staged, mtime);
    fs::rename(&staged, &path).unwrap();

    assert_eq!(&cached(&mut cache, &path, 1000).body[..], b"new()");
    assert_eq!(cache.counters().stale_reloads, 1);
}

#[test]
fn deleted_file_is_removed_at_revalidation_and_reported_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gone.txt", b"bye");
    let mut cache = ShardCache::new(CacheConfig::with_budget(1 << 20)).unwrap();
    cached(&mut cache, &path, 0);
    fs::remove_file(&path).unwrap();

    assert!(matches!(
        cache.get_or_load(&path, 1000),
        Err(CacheError::NotFound)
    ));
    assert!(cache.is_empty());
    assert_eq!(cache.counters().bytes_cached, 0);
    assert!(matches!(
        cache.get_or_load(&path, 1001),
        Err(CacheError::NotFound)
    ));
}

#[test]
fn directories_and_missing_paths_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "file.txt", b"x");
    let mut cache = ShardCache::new(CacheConfig::with_budget(1 << 20)).unwrap();
    assert!(matches!(
        cache.get_or_load(dir.path(), 0),
        Err(CacheError::IsDirectory)
    ));
    assert!(matches!(
        cache.get_or_load(&dir.path().join("nope"), 0),
        Err(CacheError::NotFound)
    ));
    assert!(matches!(
        cache.get_or_load(&file.join("below-a-file"), 0),
        Err(CacheError::NotFound)
    ));
    assert!(cache.is_empty());

    // A cached file replaced by a directory.
    cached(&mut cache, &file, 0);
    fs::remove_file(&file).unwrap();
    fs::create_dir(&file).unwrap();
    assert!(matches!(
        cache.get_or_load(&file, 1000),
        Err(CacheError::IsDirectory)
    ));
    assert!(cache.is_empty());
}

#[test]
fn too_large_file_is_streamed_in_chunks_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..10_000u32).map(|index| (index % 251) as u8).collect();
    let path = write(dir.path(), "big.bin", &content);
    let mut cache = ShardCache::new(CacheConfig {
        object_bytes_max: 4096,
        ..CacheConfig::with_budget(1 << 20)
    })
    .unwrap();

    for round in 0..2 {
        let Ok(Fetched::TooLarge(large)) = cache.get_or_load(&path, 0) else {
            panic!("round {round}: expected TooLarge");
        };
        assert_eq!(large.meta.size_bytes, 10_000);
        let mut stream = large.into_stream(100..9_000, 3000);
        let mut received = Vec::new();
        let mut chunk_lengths = Vec::new();
        let mut buffers = Vec::new();
        while let Some(chunk) = stream.next_chunk().unwrap() {
            chunk_lengths.push(chunk.len());
            buffers.push(chunk.as_ptr());
            received.extend_from_slice(&chunk);
            stream.recycle(chunk);
        }
        assert_eq!(chunk_lengths, vec![3000, 3000, 2900]);
        assert!(
            buffers.iter().all(|pointer| *pointer == buffers[0]),
            "every chunk reuses the recycled buffer"
        );
        assert_eq!(received, &content[100..9_000]);
    }
    let counters = cache.counters();
    assert_eq!(
        (counters.too_large, counters.misses, counters.objects),
        (2, 2, 0)
    );
}

#[test]
fn stream_of_a_file_that_shrinks_fails_instead_of_sending_short() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "shrinks.bin", &[7u8; 8192]);
    let mut cache = ShardCache::new(CacheConfig {
        object_bytes_max: 1024,
        ..CacheConfig::with_budget(1 << 20)
    })
    .unwrap();
    let Ok(Fetched::TooLarge(large)) = cache.get_or_load(&path, 0) else {
        panic!("expected TooLarge");
    };
    let mut stream = large.into_stream(0..8192, 4096);
    assert_eq!(
        stream.next_chunk().unwrap().map(|chunk| chunk.len()),
        Some(4096)
    );
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(5000)
        .unwrap();
    let error = stream.next_chunk().unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
}

/// Regression: a file whose length differs from its `stat` size (sysfs reports 4096 bytes for a few) was cached
/// with `meta.size_bytes` 4096 and a 4-byte body, so Content-Length would have promised bytes never sent.
#[test]
fn file_whose_length_is_not_its_stat_size_is_an_error_not_a_short_body() {
    let path = Path::new("/sys/devices/system/cpu/online");
    let Ok(stat) = fs::metadata(path) else {
        eprintln!("no {}: nothing to check here", path.display());
        return;
    };
    let length = fs::read(path).unwrap().len() as u64;
    assert_ne!(
        stat.len(),
        length,
        "sysfs reports a size other than the length"
    );
    let mut cache = ShardCache::new(CacheConfig::with_budget(1 << 20)).unwrap();
    assert!(matches!(cache.get_or_load(path, 0), Err(CacheError::Io(_))));
    assert!(cache.is_empty());
    assert_eq!(
        cache.counters().buffered_reads,
        2,
        "one retry before giving up"
    );
}

/// True when this directory's file system accepts an aligned `O_DIRECT` read.
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = write(dir, "probe", &[0u8; 4096]);
    let Ok(file) = fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
    else {
        return false;
    };
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: non-zero size; freed below with the same layout.
    let buffer = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: `buffer` is valid for 4096 bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buffer, 4096) };
    let works = std::os::unix::fs::FileExt::read_at(&file, slice, 0).is_ok();
    // SAFETY: allocated above with `layout`.
    unsafe { std::alloc::dealloc(buffer, layout) };
    fs::remove_file(&probe).unwrap();
    works
}

fn check_read_modes(dir: &Path) {
    let large: Vec<u8> = (0..(200 * 1024 + 123u32))
        .map(|index| (index * 7 % 253) as u8)
        .collect();
    let small = b"small file under the O_DIRECT threshold".to_vec();
    let large_path = write(dir, "large.bin", &large);
    let small_path = write(dir, "small.txt", &small);
    let direct = direct_io_works(dir);
    for mode in [
        ReadMode::DirectOrDropCache,
        ReadMode::DropCache,
        ReadMode::PageCache,
    ] {
        let mut cache = ShardCache::new(CacheConfig {
            read_mode: mode,
            ..CacheConfig::with_budget(16 << 20)
        })
        .unwrap();
        assert_eq!(
            cached(&mut cache, &large_path, 0).body[..],
            large[..],
            "{mode:?} on {}",
            dir.display()
        );
        assert_eq!(
            cached(&mut cache, &small_path, 0).body[..],
            small[..],
            "{mode:?}"
        );
        let counters = cache.counters();
        let expected_direct = u64::from(mode == ReadMode::DirectOrDropCache && direct);
        assert_eq!(
            counters.direct_reads, expected_direct,
            "{mode:?}, O_DIRECT works: {direct}"
        );
        assert_eq!(counters.buffered_reads, 2 - expected_direct, "{mode:?}");
    }
}

#[test]
fn every_read_mode_loads_exact_bytes_on_the_temp_file_system() {
    let dir = tempfile::tempdir().unwrap();
    check_read_modes(dir.path());
}

#[test]
fn every_read_mode_loads_exact_bytes_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: the tmpfs case is covered by the temp file system case only");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    check_read_modes(dir.path());
}

#[test]
fn drop_cache_load_leaves_the_cache_as_the_only_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "resident.bin", &[3u8; 256 * 1024]);
    fs::File::open(&path).unwrap().sync_all().unwrap();
    // Bring the file into the page cache, as a previous reader would have.
    let _ = fs::read(&path).unwrap();
    let before = resident_pages(&path);
    let mut cache = ShardCache::new(CacheConfig {
        read_mode: ReadMode::DropCache,
        ..CacheConfig::with_budget(16 << 20)
    })
    .unwrap();
    assert_eq!(cached(&mut cache, &path, 0).body.len(), 256 * 1024);
    let after = resident_pages(&path);
    assert_eq!(
        after, 0,
        "{after} pages still resident after DONTNEED ({before} before the load)"
    );

    let mut keeping = ShardCache::new(CacheConfig {
        read_mode: ReadMode::PageCache,
        ..CacheConfig::with_budget(16 << 20)
    })
    .unwrap();
    cached(&mut keeping, &path, 0);
    assert_eq!(
        resident_pages(&path),
        64,
        "the PageCache mode keeps the kernel's copy (double buffering)"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random request sequences over files of random sizes: the budget holds after every request, every body is
    /// the file's bytes, and every request is counted once as a hit or a miss.
    #[test]
    fn random_requests_stay_within_budget_and_serve_exact_bytes(
        sizes in proptest::collection::vec(0usize..3000, 8),
        requests in proptest::collection::vec(0usize..8, 1..120),
        budget in 2000u64..9000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(PathBuf, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(index, size)| {
                let content = vec![index as u8; *size];
                (write(dir.path(), &format!("f{index}"), &content), content)
            })
            .collect();
        let mut cache = ShardCache::new(CacheConfig {
            object_bytes_max: budget - 1024,
            ..CacheConfig::with_budget(budget)
        })
        .unwrap();
        for (now_ms, index) in requests.iter().enumerate() {
            let (path, content) = &files[*index];
            match cache.get_or_load(path, now_ms as u64 / 4).unwrap() {
                Fetched::Cached(object) => prop_assert_eq!(&object.body[..], &content[..]),
                Fetched::TooLarge(large) => prop_assert!(large.meta.size_bytes > budget - 1024),
            }
            let counters = cache.counters();
            prop_assert!(counters.bytes_cached <= budget, "{} above {}", counters.bytes_cached, budget);
            prop_assert_eq!(counters.hits + counters.misses + counters.stale_reloads, now_ms as u64 + 1);
        }
    }
}
