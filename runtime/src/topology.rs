//! Machine topology: packages, cores, hardware threads and NUMA nodes; shard selection and pinning.
//!
//! This module owns the answer to "which CPUs do shards run on". It reads the kernel's view from sysfs
//! (`/sys/devices/system/cpu/cpuN/topology/{physical_package_id,core_id}`, `/sys/devices/system/node/nodeN/cpulist`)
//! and intersects it with the process's allowed CPU set (`sched_getaffinity`), so a process started under
//! `taskset` or a cgroup cpuset only ever sees — and pins to — the CPUs it may use. With the cargo feature
//! `hwloc` the same [`Topology`] can be built through hwloc (`Topology::discover_hwloc`); the sysfs path needs
//! no system library and is the default.
//!
//! Invariants of a [`Topology`]:
//! - every hardware thread is in the allowed CPU set, listed once, sorted by [`CpuId`];
//! - a core is identified by (package, core id); its first hardware thread is its lowest CPU number.
//!
//! Shard selection ([`ShardSelection`]), the meaning of `--cores` and `--cpus` in every command: `--cores all` =
//! one shard per physical core, on the core's first hardware thread (hyperthread siblings share a core's caches
//! and execution units, so a second shard there mostly competes with the first). `--cores N` = the first N CPUs
//! of the order "first thread of every core, then second threads, …". `--cpus LIST` (`1`, `0,1`, `0-3`, `0-1,6`)
//! is taken as given after checking every CPU is allowed; a lone number there is one CPU.
//!
//! Limits: at most [`CPUS_MAX`] CPU numbers (the kernel's `CPU_SETSIZE`, 1024); sysfs files read here are
//! a few bytes each.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustix::thread::CpuSet;

/// Highest CPU number + 1 this module handles (the kernel's `CPU_SETSIZE`).
pub const CPUS_MAX: usize = CpuSet::MAX_CPU;

/// An operating-system CPU number (a hardware thread, "PU" in hwloc), as in `/sys/devices/system/cpu/cpuN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(pub u32);

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu{}", self.0)
    }
}

/// A physical package (socket) number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId(pub u32);

/// A physical core: unique per (package, core id) — core ids repeat across packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId {
    pub package: PackageId,
    pub core: u32,
}

/// A NUMA node number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NumaNodeId(pub u32);

/// One hardware thread and where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardwareThread {
    pub cpu: CpuId,
    pub core: CoreId,
    /// `None` when the kernel exposes no NUMA information (non-NUMA builds) or the backend cannot tell.
    pub numa_node: Option<NumaNodeId>,
}

/// Errors of topology discovery, selection and pinning.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("sched_getaffinity failed: {0}")]
    Affinity(std::io::Error),
    #[error("pinning the current thread to {cpu}: {source}")]
    Pin { cpu: CpuId, source: std::io::Error },
    #[error("no usable CPU: the allowed set and the online set do not intersect")]
    NoCpus,
    #[error("shard count {requested} is not in 1..={available} (allowed hardware threads)")]
    CountOutOfRange { requested: usize, available: usize },
    #[error("{cpu} is not an allowed online CPU (allowed: {allowed})")]
    CpuNotAllowed { cpu: CpuId, allowed: String },
    #[error("{cpu} is listed twice in the shard selection")]
    DuplicateCpu { cpu: CpuId },
    #[cfg(feature = "hwloc")]
    #[error("hwloc: {0}")]
    Hwloc(String),
}

/// Which CPUs run shards (or a load generator's threads): how many cores (`cores`: `all` or a count), or exactly
/// which CPUs (`cpus`: a CPU list). Every command spells them the same way: `--cores all|N` and `--cpus LIST`
/// (and `cores = "…"` / `cpus = "…"` in a config file); the two are exclusive.
///
/// [`ShardSelection::parse_cores`] reads a count, [`ShardSelection::parse_cpus`] a list, where a lone number is
/// one CPU (`--cpus 1` is CPU 1, `--cores 1` is one core). `FromStr` is `parse_cores`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShardSelection {
    /// One shard per physical core (the default).
    #[default]
    All,
    /// The first `n` CPUs in core-spreading order (see the module docs).
    Count(usize),
    /// Exactly these CPUs, in this order (shard i runs on `list[i]`).
    List(Vec<CpuId>),
}

/// A `cores` or `cpus` setting that does not parse, or both given at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardSelectionParseError {
    /// `cores` is `all` or a count; a CPU list (or CPU 0) there is answered with the `cpus` spelling.
    #[error("{input:?} is not a count of cores: it {reason}; expected \"all\" or a count like \"2\"{hint}", hint = cpus_hint(input))]
    Cores { input: String, reason: &'static str },
    /// `cpus` is a CPU list; `part` is the offending piece.
    #[error("bad CPU list {input:?}: part {part:?} {reason}; expected a list like \"0\", \"0,2\" or \"0-3\"")]
    Cpus {
        input: String,
        part: String,
        reason: &'static str,
    },
    #[error("both a count of cores ({cores:?}) and a CPU list ({cpus:?}) given: give one (cores or cpus)")]
    Both { cores: String, cpus: String },
}

/// For a `cores` value that reads as a CPU list: how to say it with `cpus` instead.
fn cpus_hint(input: &str) -> String {
    match parse_cpu_list(input) {
        Ok(cpus) => {
            let list = input.trim();
            let noun = if cpus.len() == 1 { "CPU" } else { "CPUs" };
            format!(" (to run on {noun} {list}, give the CPU list: --cpus {list}, or cpus = \"{list}\" in a config file)")
        }
        Err(_) => String::new(),
    }
}

impl ShardSelection {
    /// A count of cores: `all` (any case) or a number of at least 1.
    pub fn parse_cores(input: &str) -> Result<ShardSelection, ShardSelectionParseError> {
        let trimmed = input.trim();
        let error = |reason: &'static str| ShardSelectionParseError::Cores {
            input: input.to_string(),
            reason,
        };
        if trimmed.eq_ignore_ascii_case("all") {
            return Ok(ShardSelection::All);
        }
        if trimmed.is_empty() {
            return Err(error("is empty"));
        }
        if trimmed.contains([',', '-']) {
            return Err(error("is a CPU list"));
        }
        match trimmed.parse::<usize>() {
            Ok(0) => Err(error("must be at least 1")),
            Ok(count) => Ok(ShardSelection::Count(count)),
            Err(_) => Err(error("is not a number")),
        }
    }

    /// A CPU list in the kernel's format (`0`, `0,2`, `0-3`, `0-1,6`), taken in order; a CPU listed twice is refused.
    pub fn parse_cpus(input: &str) -> Result<ShardSelection, ShardSelectionParseError> {
        let error = |part: &str, reason: &'static str| ShardSelectionParseError::Cpus {
            input: input.to_string(),
            part: part.to_string(),
            reason,
        };
        let cpus = parse_cpu_list(input).map_err(|(part, reason)| error(&part, reason))?;
        let mut seen = BTreeSet::new();
        for cpu in &cpus {
            if !seen.insert(*cpu) {
                return Err(error(&cpu.0.to_string(), "is listed twice"));
            }
        }
        Ok(ShardSelection::List(cpus))
    }

    /// The selection a `cores` and a `cpus` setting give: `None` when neither is set, an error when both are.
    pub fn from_settings(
        cores: Option<&str>,
        cpus: Option<&str>,
    ) -> Result<Option<ShardSelection>, ShardSelectionParseError> {
        match (cores, cpus) {
            (None, None) => Ok(None),
            (Some(cores), None) => ShardSelection::parse_cores(cores).map(Some),
            (None, Some(cpus)) => ShardSelection::parse_cpus(cpus).map(Some),
            (Some(cores), Some(cpus)) => Err(ShardSelectionParseError::Both {
                cores: cores.to_string(),
                cpus: cpus.to_string(),
            }),
        }
    }

    /// The `cores` and `cpus` settings that [`ShardSelection::from_settings`] reads back to this selection
    /// (exactly one is `Some`).
    pub fn to_settings(&self) -> (Option<String>, Option<String>) {
        match self {
            ShardSelection::All => (Some("all".to_string()), None),
            ShardSelection::Count(count) => (Some(count.to_string()), None),
            ShardSelection::List(cpus) => {
                let list: Vec<String> = cpus.iter().map(|cpu| cpu.0.to_string()).collect();
                (None, Some(list.join(",")))
            }
        }
    }
}

impl FromStr for ShardSelection {
    type Err = ShardSelectionParseError;

    /// [`ShardSelection::parse_cores`].
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        ShardSelection::parse_cores(input)
    }
}

/// `all`, a count, or `cpus 0,2` (the words say which setting it came from).
impl fmt::Display for ShardSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardSelection::All => write!(f, "all"),
            ShardSelection::Count(n) => write!(f, "{n}"),
            ShardSelection::List(cpus) => {
                let parts: Vec<String> = cpus.iter().map(|c| c.0.to_string()).collect();
                write!(f, "cpus {}", parts.join(","))
            }
        }
    }
}

/// Parses the kernel's CPU list format (`0-3,6,8-9`; empty parts are ignored, so `2,` is CPU 2).
/// On error returns the offending part and why.
fn parse_cpu_list(text: &str) -> Result<Vec<CpuId>, (String, &'static str)> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let number = |s: &str| -> Result<u32, (String, &'static str)> {
            let n: u32 = s
                .trim()
                .parse()
                .map_err(|_| (part.to_string(), "is not a CPU number or range"))?;
            if n as usize >= CPUS_MAX {
                return Err((part.to_string(), "is beyond the highest CPU number (1023)"));
            }
            Ok(n)
        };
        match part.split_once('-') {
            None => cpus.push(CpuId(number(part)?)),
            Some((low, high)) => {
                let (low, high) = (number(low)?, number(high)?);
                if low > high {
                    return Err((part.to_string(), "is a range whose start exceeds its end"));
                }
                cpus.extend((low..=high).map(CpuId));
            }
        }
    }
    if cpus.is_empty() {
        return Err((text.to_string(), "names no CPU"));
    }
    Ok(cpus)
}

/// The hardware threads this process may use, grouped into cores, packages and NUMA nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    threads: Vec<HardwareThread>,
}

impl Topology {
    /// Builds a topology from hardware threads (sorted and deduplicated here).
    pub fn from_threads(mut threads: Vec<HardwareThread>) -> Result<Self, TopologyError> {
        threads.sort_by_key(|t| t.cpu);
        threads.dedup_by_key(|t| t.cpu);
        if threads.is_empty() {
            return Err(TopologyError::NoCpus);
        }
        Ok(Topology { threads })
    }

    /// Discovers the topology from sysfs, restricted to the process's allowed CPUs.
    pub fn discover() -> Result<Self, TopologyError> {
        let allowed = allowed_cpus()?;
        Self::discover_sysfs(Path::new("/sys/devices/system"), &allowed)
    }

    /// Discovers from a sysfs tree rooted at `root` (normally `/sys/devices/system`), keeping only `allowed`.
    pub fn discover_sysfs(root: &Path, allowed: &BTreeSet<CpuId>) -> Result<Self, TopologyError> {
        let online_path = root.join("cpu/online");
        let online = parse_cpu_list(&read_trimmed(&online_path)?).map_err(|(part, reason)| {
            TopologyError::Parse {
                path: online_path.clone(),
                reason: format!("{part:?} {reason}"),
            }
        })?;
        let numa_of = numa_nodes_sysfs(root)?;
        let mut threads = Vec::new();
        for cpu in online.into_iter().filter(|c| allowed.contains(c)) {
            let dir = root.join(format!("cpu/cpu{}/topology", cpu.0));
            let package = read_number(&dir.join("physical_package_id"))?;
            let core = read_number(&dir.join("core_id"))?;
            threads.push(HardwareThread {
                cpu,
                core: CoreId {
                    package: PackageId(package),
                    core,
                },
                numa_node: numa_of.get(&cpu).copied(),
            });
        }
        Self::from_threads(threads)
    }

    /// All usable hardware threads, sorted by CPU number.
    pub fn hardware_threads(&self) -> &[HardwareThread] {
        &self.threads
    }

    /// Number of distinct packages with a usable CPU.
    pub fn package_count(&self) -> usize {
        self.threads
            .iter()
            .map(|t| t.core.package)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Number of distinct physical cores with a usable CPU.
    pub fn core_count(&self) -> usize {
        self.cores().len()
    }

    /// Number of distinct NUMA nodes with a usable CPU (0 when unknown).
    pub fn numa_node_count(&self) -> usize {
        self.threads
            .iter()
            .filter_map(|t| t.numa_node)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Cores and their CPUs, lowest CPU first.
    pub fn cores(&self) -> BTreeMap<CoreId, Vec<CpuId>> {
        let mut cores: BTreeMap<CoreId, Vec<CpuId>> = BTreeMap::new();
        for t in &self.threads {
            cores.entry(t.core).or_default().push(t.cpu);
        }
        cores
    }

    /// CPUs in core-spreading order: the first thread of every core (by CPU number), then the second threads…
    pub fn spreading_order(&self) -> Vec<CpuId> {
        let mut by_core: Vec<Vec<CpuId>> = self.cores().into_values().collect();
        by_core.sort_by_key(|cpus| cpus[0]);
        let depth = by_core.iter().map(Vec::len).max().unwrap_or(0);
        (0..depth)
            .flat_map(|level| {
                by_core
                    .iter()
                    .filter_map(move |cpus| cpus.get(level).copied())
            })
            .collect()
    }

    /// The CPUs that shards run on, shard i on element i.
    pub fn select(&self, selection: &ShardSelection) -> Result<Vec<CpuId>, TopologyError> {
        let order = self.spreading_order();
        match selection {
            ShardSelection::All => Ok(order[..self.core_count()].to_vec()),
            ShardSelection::Count(n) => {
                if *n == 0 || *n > order.len() {
                    return Err(TopologyError::CountOutOfRange {
                        requested: *n,
                        available: order.len(),
                    });
                }
                Ok(order[..*n].to_vec())
            }
            ShardSelection::List(cpus) => {
                let mut seen = BTreeSet::new();
                for cpu in cpus {
                    if !self.threads.iter().any(|t| t.cpu == *cpu) {
                        let allowed: Vec<String> =
                            self.threads.iter().map(|t| t.cpu.0.to_string()).collect();
                        return Err(TopologyError::CpuNotAllowed {
                            cpu: *cpu,
                            allowed: allowed.join(","),
                        });
                    }
                    if !seen.insert(*cpu) {
                        return Err(TopologyError::DuplicateCpu { cpu: *cpu });
                    }
                }
                Ok(cpus.clone())
            }
        }
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`).
pub fn allowed_cpus() -> Result<BTreeSet<CpuId>, TopologyError> {
    let set =
        rustix::thread::sched_getaffinity(None).map_err(|e| TopologyError::Affinity(e.into()))?;
    Ok((0..CPUS_MAX)
        .filter(|&i| set.is_set(i))
        .map(|i| CpuId(i as u32))
        .collect())
}

/// Pins the calling thread to exactly one CPU (`sched_setaffinity`).
pub fn pin_current_thread(cpu: CpuId) -> Result<(), TopologyError> {
    let mut set = CpuSet::new();
    if cpu.0 as usize >= CPUS_MAX {
        return Err(TopologyError::Pin {
            cpu,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    set.set(cpu.0 as usize);
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| TopologyError::Pin {
        cpu,
        source: e.into(),
    })
}

/// The CPU the calling thread is running on right now (`sched_getcpu`).
pub fn current_cpu() -> CpuId {
    CpuId(rustix::thread::sched_getcpu() as u32)
}

fn read_trimmed(path: &Path) -> Result<String, TopologyError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| TopologyError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn read_number(path: &Path) -> Result<u32, TopologyError> {
    let text = read_trimmed(path)?;
    // Some kernels report -1 for an unknown package; treat it as package 0.
    if text == "-1" {
        return Ok(0);
    }
    text.parse().map_err(|_| TopologyError::Parse {
        path: path.to_path_buf(),
        reason: format!("{text:?} is not a number"),
    })
}

/// Maps CPU → NUMA node from `root/node/nodeN/cpulist`; empty when the kernel has no node directory.
fn numa_nodes_sysfs(root: &Path) -> Result<BTreeMap<CpuId, NumaNodeId>, TopologyError> {
    let mut map = BTreeMap::new();
    let node_root = root.join("node");
    let Ok(entries) = fs::read_dir(&node_root) else {
        return Ok(map);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("node")) else {
            continue;
        };
        let Ok(node) = number.parse::<u32>() else {
            continue;
        };
        let path = entry.path().join("cpulist");
        let text = read_trimmed(&path)?;
        if text.is_empty() {
            continue; // a memory-only node
        }
        let cpus = parse_cpu_list(&text).map_err(|(part, reason)| TopologyError::Parse {
            path: path.clone(),
            reason: format!("{part:?} {reason}"),
        })?;
        for cpu in cpus {
            map.insert(cpu, NumaNodeId(node));
        }
    }
    Ok(map)
}

#[cfg(feature = "hwloc")]
impl Topology {
    /// Discovers the topology through hwloc, restricted to the process's allowed CPUs.
    ///
    /// Uses only `objects_with_type` for `Package`, `Core` and `PU` plus `cpuset()`/`os_index()`:
    /// hwloc2 2.2.0 panics in `objects_with_type(NUMANode)` and segfaults in `TopologyObject::name()`
    /// against hwloc 2.9. NUMA nodes therefore come from sysfs even on this path.
    pub fn discover_hwloc() -> Result<Self, TopologyError> {
        use hwloc2::{ObjectType, Topology as HwlocTopology};

        let allowed = allowed_cpus()?;
        let topology =
            HwlocTopology::new().ok_or_else(|| TopologyError::Hwloc("init failed".into()))?;
        let cpus_of = |object: &hwloc2::TopologyObject| -> Vec<u32> {
            object
                .cpuset()
                .map(|set| set.into_iter().collect())
                .unwrap_or_default()
        };
        let objects = |kind: ObjectType| {
            topology
                .objects_with_type(&kind)
                .map_err(|e| TopologyError::Hwloc(format!("objects_with_type({kind:?}): {e:?}")))
        };
        let mut package_of = BTreeMap::new();
        for package in objects(ObjectType::Package)? {
            for cpu in cpus_of(package) {
                package_of.insert(cpu, package.os_index());
            }
        }
        let mut core_of = BTreeMap::new();
        for core in objects(ObjectType::Core)? {
            for cpu in cpus_of(core) {
                core_of.insert(cpu, core.os_index());
            }
        }
        let numa_of = numa_nodes_sysfs(Path::new("/sys/devices/system"))?;
        let mut threads = Vec::new();
        for pu in objects(ObjectType::PU)? {
            let cpu = CpuId(pu.os_index());
            if !allowed.contains(&cpu) {
                continue;
            }
            threads.push(HardwareThread {
                cpu,
                core: CoreId {
                    package: PackageId(package_of.get(&cpu.0).copied().unwrap_or(0)),
                    core: core_of.get(&cpu.0).copied().unwrap_or(cpu.0),
                },
                numa_node: numa_of.get(&cpu).copied(),
            });
        }
        Self::from_threads(threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(cpu: u32, package: u32, core: u32) -> HardwareThread {
        HardwareThread {
            cpu: CpuId(cpu),
            core: CoreId {
                package: PackageId(package),
                core,
            },
            numa_node: Some(NumaNodeId(package)),
        }
    }

    /// 2 packages × 2 cores × 2 threads, Intel-style numbering: siblings are n and n+4.
    fn two_socket() -> Topology {
        Topology::from_threads(vec![
            thread(0, 0, 0),
            thread(1, 0, 1),
            thread(2, 1, 0),
            thread(3, 1, 1),
            thread(4, 0, 0),
            thread(5, 0, 1),
            thread(6, 1, 0),
            thread(7, 1, 1),
        ])
        .unwrap()
    }

    #[test]
    fn parses_counts_of_cores() {
        assert_eq!(ShardSelection::parse_cores("all"), Ok(ShardSelection::All));
        assert_eq!(
            ShardSelection::parse_cores(" ALL "),
            Ok(ShardSelection::All)
        );
        assert_eq!(
            ShardSelection::parse_cores("2"),
            Ok(ShardSelection::Count(2))
        );
        assert_eq!("2".parse(), Ok(ShardSelection::Count(2)));
    }

    #[test]
    fn parses_cpu_lists_where_a_lone_number_is_one_cpu() {
        let cpus = |input| ShardSelection::parse_cpus(input);
        assert_eq!(cpus("1"), Ok(ShardSelection::List(vec![CpuId(1)])));
        assert_eq!(
            cpus("0,1"),
            Ok(ShardSelection::List(vec![CpuId(0), CpuId(1)]))
        );
        assert_eq!(
            cpus("0-3"),
            Ok(ShardSelection::List((0..4).map(CpuId).collect()))
        );
        assert_eq!(
            cpus("0-1,6"),
            Ok(ShardSelection::List(vec![CpuId(0), CpuId(1), CpuId(6)]))
        );
        assert_eq!(cpus("2,"), Ok(ShardSelection::List(vec![CpuId(2)])));
        assert_eq!(
            cpus("3,1"),
            Ok(ShardSelection::List(vec![CpuId(3), CpuId(1)]))
        );
    }

    /// Issue 18: `--cores 0` was refused without saying that `--cpus 0` is what pins to CPU 0.
    #[test]
    fn cores_zero_or_a_cpu_list_suggests_cpus() {
        for (input, reason) in [
            ("0", "must be at least 1"),
            ("0-3", "is a CPU list"),
            ("2,", "is a CPU list"),
        ] {
            let error = ShardSelection::parse_cores(input).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(reason), "{input:?}: {message}");
            let list = input.trim();
            assert!(
                message.contains(&format!("--cpus {list}")),
                "{input:?}: {message}"
            );
        }
        let message = ShardSelection::parse_cores("two").unwrap_err().to_string();
        assert!(message.contains("is not a number"), "{message}");
        assert!(
            !message.contains("--cpus"),
            "no CPU-list hint for a word: {message}"
        );
    }

    #[test]
    fn cpu_list_errors_name_the_bad_part() {
        let cases = [
            ("", ""),
            ("two", "two"),
            ("0,x", "x"),
            ("3-1", "3-1"),
            ("0-", "0-"),
            ("0,1,0", "0"),
            ("5000,", "5000"),
        ];
        for (input, part) in cases {
            let error = ShardSelection::parse_cpus(input).unwrap_err();
            assert!(
                matches!(&error, ShardSelectionParseError::Cpus { part: p, .. } if p == part),
                "input {input:?}: {error}"
            );
            assert!(error.to_string().contains(&format!("{part:?}")), "{error}");
        }
    }

    #[test]
    fn cores_and_cpus_are_exclusive() {
        assert_eq!(ShardSelection::from_settings(None, None), Ok(None));
        assert_eq!(
            ShardSelection::from_settings(Some("2"), None),
            Ok(Some(ShardSelection::Count(2)))
        );
        assert_eq!(
            ShardSelection::from_settings(None, Some("2")),
            Ok(Some(ShardSelection::List(vec![CpuId(2)])))
        );
        assert!(matches!(
            ShardSelection::from_settings(Some("2"), Some("0-1")),
            Err(ShardSelectionParseError::Both { .. })
        ));
    }

    #[test]
    fn display_says_count_or_list() {
        assert_eq!(ShardSelection::All.to_string(), "all");
        assert_eq!(ShardSelection::Count(3).to_string(), "3");
        assert_eq!(
            ShardSelection::List(vec![CpuId(0), CpuId(2)]).to_string(),
            "cpus 0,2"
        );
    }

    #[test]
    fn counts_two_socket_machine() {
        let t = two_socket();
        assert_eq!(t.package_count(), 2);
        assert_eq!(t.core_count(), 4);
        assert_eq!(t.hardware_threads().len(), 8);
        assert_eq!(t.numa_node_count(), 2);
    }

    #[test]
    fn all_takes_first_thread_of_each_core() {
        let t = two_socket();
        assert_eq!(
            t.select(&ShardSelection::All).unwrap(),
            vec![CpuId(0), CpuId(1), CpuId(2), CpuId(3)]
        );
    }

    #[test]
    fn count_spreads_over_cores_before_siblings() {
        let t = two_socket();
        assert_eq!(
            t.select(&ShardSelection::Count(5)).unwrap(),
            vec![CpuId(0), CpuId(1), CpuId(2), CpuId(3), CpuId(4)]
        );
        assert!(matches!(
            t.select(&ShardSelection::Count(9)),
            Err(TopologyError::CountOutOfRange {
                requested: 9,
                available: 8
            })
        ));
    }

    #[test]
    fn list_must_be_allowed_and_distinct() {
        let t = Topology::from_threads(vec![thread(0, 0, 0), thread(1, 0, 1)]).unwrap();
        assert_eq!(
            t.select(&ShardSelection::List(vec![CpuId(1), CpuId(0)]))
                .unwrap(),
            vec![CpuId(1), CpuId(0)]
        );
        assert!(matches!(
            t.select(&ShardSelection::List(vec![CpuId(7)])),
            Err(TopologyError::CpuNotAllowed { cpu: CpuId(7), .. })
        ));
        assert!(matches!(
            t.select(&ShardSelection::List(vec![CpuId(0), CpuId(0)])),
            Err(TopologyError::DuplicateCpu { cpu: CpuId(0) })
        ));
    }

    #[test]
    fn sysfs_tree_with_restricted_affinity() {
        let root = std::env::temp_dir().join(format!("larder-topology-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let write = |relative: &str, text: &str| {
            let path = root.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write("cpu/online", "0-3\n");
        for (cpu, package, core) in [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1)] {
            write(
                &format!("cpu/cpu{cpu}/topology/physical_package_id"),
                &format!("{package}\n"),
            );
            write(
                &format!("cpu/cpu{cpu}/topology/core_id"),
                &format!("{core}\n"),
            );
        }
        write("node/node0/cpulist", "0-1\n");
        write("node/node1/cpulist", "2-3\n");
        write("node/node2/cpulist", "\n");
        let allowed: BTreeSet<CpuId> = [CpuId(1), CpuId(2), CpuId(3)].into();
        let t = Topology::discover_sysfs(&root, &allowed).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(t.hardware_threads().len(), 3);
        assert_eq!(t.core_count(), 2);
        assert_eq!(t.numa_node_count(), 2);
        assert_eq!(
            t.select(&ShardSelection::All).unwrap(),
            vec![CpuId(1), CpuId(2)]
        );
    }

    #[test]
    fn this_machine_has_a_cpu_and_pinning_sticks() {
        let t = Topology::discover().unwrap();
        assert!(t.core_count() >= 1);
        let cpu = t.select(&ShardSelection::Count(1)).unwrap()[0];
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(current_cpu(), cpu);
            assert_eq!(allowed_cpus().unwrap(), [cpu].into());
        })
        .join()
        .unwrap();
    }

    #[cfg(feature = "hwloc")]
    #[test]
    fn hwloc_and_sysfs_agree() {
        let sysfs = Topology::discover().unwrap();
        let hwloc = Topology::discover_hwloc().unwrap();
        assert_eq!(hwloc.package_count(), sysfs.package_count());
        assert_eq!(hwloc.core_count(), sysfs.core_count());
        assert_eq!(
            hwloc.hardware_threads().len(),
            sysfs.hardware_threads().len()
        );
        assert_eq!(hwloc.numa_node_count(), sysfs.numa_node_count());
        assert_eq!(
            hwloc.select(&ShardSelection::All).unwrap(),
            sysfs.select(&ShardSelection::All).unwrap()
        );
    }
}
