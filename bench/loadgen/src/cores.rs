//! Which CPUs the generator threads run on, and pinning.
//!
//! Owns: turning `--cores all|N` or `--cpus LIST` into a [`CoreList`], one generator thread per CPU. The flags
//! mean what they mean for `larder serve`'s shards, and are parsed and placed by the same code
//! (`larder_runtime::topology`): `--cores all` = one thread per physical core (the default), `--cores N` = N
//! threads spread over cores before hyperthreads, `--cpus 1` / `0,2` / `0-3` = exactly these CPUs (a lone number
//! is one CPU). Every CPU must be in this process's affinity mask (so `taskset` and cpusets are honoured).
//!
//! Invariants: a [`CoreList`] is non-empty and has no duplicates; thread `i` runs on `ids()[i]`.
//! Limits: CPU numbers below 1024 (the kernel's default `cpu_set_t`, `larder_runtime::topology::CPUS_MAX`).

use std::fmt;

use larder_runtime::topology::{self, CpuId, ShardSelection, ShardSelectionParseError, Topology};

/// A CPU id as the kernel numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub usize);

impl fmt::Display for CoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Errors from choosing the CPUs or pinning a thread.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{flag}: {reason}")]
    Parse {
        flag: &'static str,
        reason: ShardSelectionParseError,
    },
    #[error("choosing the CPUs: {0}")]
    Topology(topology::TopologyError),
    #[error("cannot pin thread to CPU {core}: {reason}")]
    Pin {
        core: CoreId,
        reason: topology::TopologyError,
    },
}

/// A non-empty, duplicate-free list of CPUs: one generator thread runs on each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreList(Vec<CoreId>);

impl CoreList {
    /// The CPUs `--cores` or `--cpus` select (neither: `--cores all`), checked against this process's CPUs.
    pub fn select(cores: Option<&str>, cpus: Option<&str>) -> Result<CoreList, CoreError> {
        let flag = if cpus.is_some() { "--cpus" } else { "--cores" };
        let selection = ShardSelection::from_settings(cores, cpus)
            .map_err(|reason| CoreError::Parse { flag, reason })?
            .unwrap_or_default();
        let cpus = Topology::discover()
            .and_then(|topology| topology.select(&selection))
            .map_err(CoreError::Topology)?;
        Ok(CoreList(
            cpus.into_iter().map(|cpu| CoreId(cpu.0 as usize)).collect(),
        ))
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
    topology::pin_current_thread(CpuId(core.0 as u32))
        .map_err(|reason| CoreError::Pin { core, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: `larder-bench --cores 1` meant CPU 1 while `larder serve --cores 1` meant one shard.
    #[test]
    fn cores_is_a_count_and_cpus_a_list() {
        let allowed = topology::allowed_cpus().unwrap();
        let first = allowed.iter().next().unwrap().0;
        let one = CoreList::select(Some("1"), None).unwrap();
        assert_eq!(one.len(), 1, "--cores 1 is one thread");
        let pinned = CoreList::select(None, Some(&first.to_string())).unwrap();
        assert_eq!(pinned.ids(), &[CoreId(first as usize)], "--cpus N is CPU N");
    }

    #[test]
    fn rejects_bad_selections_naming_the_flag() {
        for (cores, cpus, flag) in [
            (Some("0"), None, "--cores"),
            (Some("0-1"), None, "--cores"),
            (None, Some("a"), "--cpus"),
            (None, Some("3-1"), "--cpus"),
            (None, Some("1024"), "--cpus"),
            (Some("1"), Some("0"), "--cpus"),
        ] {
            let error = CoreList::select(cores, cpus).unwrap_err().to_string();
            assert!(error.starts_with(flag), "{cores:?} {cpus:?}: {error}");
        }
    }
}
