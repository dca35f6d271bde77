//! CPU lists and thread pinning.
//!
//! Owns: parsing `--cores` lists (`0,1`, `1`, `0-3`, `0-1,4`) into an ordered, duplicate-free [`CoreList`], and
//! pinning the calling thread to one CPU with `sched_setaffinity`.
//!
//! Invariants: a [`CoreList`] is non-empty, sorted, has no duplicates and every id is below [`CORE_ID_MAX`].
//! Limits: at most [`CORE_ID_MAX`] = 1024 CPU ids (the size of the kernel's default `cpu_set_t`).

use std::fmt;

/// Highest CPU id (exclusive) a list may name; `cpu_set_t` holds 1024 CPUs.
pub const CORE_ID_MAX: usize = 1024;

/// A CPU id as the kernel numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub usize);

impl fmt::Display for CoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Errors from parsing a CPU list or pinning a thread.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("bad CPU list {list:?}: {reason}")]
    Parse { list: String, reason: String },
    #[error("cannot pin thread to CPU {core}: {source}")]
    Pin {
        core: CoreId,
        source: std::io::Error,
    },
}

/// A non-empty, sorted, duplicate-free list of CPUs: one generator thread runs on each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreList(Vec<CoreId>);

impl CoreList {
    /// Parses `0,1`, `1`, `0-3` or any comma-separated mix of ids and inclusive ranges.
    pub fn parse(list: &str) -> Result<CoreList, CoreError> {
        let bad = |reason: &str| CoreError::Parse {
            list: list.to_string(),
            reason: reason.to_string(),
        };
        let mut ids = Vec::new();
        for part in list.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(bad("empty element"));
            }
            let (low, high) = match part.split_once('-') {
                Some((low, high)) => (low.trim(), high.trim()),
                None => (part, part),
            };
            let low: usize = low.parse().map_err(|_| bad("not a number"))?;
            let high: usize = high.parse().map_err(|_| bad("not a number"))?;
            if low > high {
                return Err(bad("range runs backwards"));
            }
            if high >= CORE_ID_MAX {
                return Err(bad("CPU id at or above 1024"));
            }
            ids.extend((low..=high).map(CoreId));
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(CoreList(ids))
    }

    /// All CPUs this process may run on (its current affinity mask), in order.
    pub fn current() -> CoreList {
        let mut ids = Vec::new();
        if let Ok(set) = rustix::thread::sched_getaffinity(None) {
            ids.extend((0..CORE_ID_MAX).filter(|&i| set.is_set(i)).map(CoreId));
        }
        if ids.is_empty() {
            ids.push(CoreId(0));
        }
        CoreList(ids)
    }

    pub fn ids(&self) -> &[CoreId] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: CoreId) -> Result<(), CoreError> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core.0);
    rustix::thread::sched_setaffinity(None, &set).map_err(|errno| CoreError::Pin {
        core,
        source: errno.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &str) -> Vec<usize> {
        CoreList::parse(list)
            .unwrap()
            .ids()
            .iter()
            .map(|c| c.0)
            .collect()
    }

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(ids("0,1"), vec![0, 1]);
        assert_eq!(ids("1"), vec![1]);
        assert_eq!(ids("0-3"), vec![0, 1, 2, 3]);
        assert_eq!(ids("3,0-1,1"), vec![0, 1, 3]);
    }

    #[test]
    fn rejects_bad_lists() {
        for list in ["", "a", "3-1", "0,,1", "1024", "-1"] {
            assert!(
                CoreList::parse(list).is_err(),
                "{list:?} should be rejected"
            );
        }
    }
}
