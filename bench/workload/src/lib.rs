//! Workloads for Larder's benchmarks and its cluster simulator.
//!
//! This crate owns everything that describes *what clients ask for*, independent of how the requests are sent
//! (`larder-bench`, h5) or simulated (`larder-sim`):
//!
//! - [`zipf`]: a Zipf popularity law over ranks `1..=n`, sampled exactly by inverse CDF over a precomputed table;
//! - [`size`]: file-size distributions ([`SizeDist`]): fixed, uniform, lognormal, Pareto and the Surge/SPECweb mix
//!   (lognormal body, Pareto tail), parsed from short strings such as `"lognormal:mu=9.357,sigma=1.318"`;
//! - [`workload`]: a [`Workload`] is a list of targets (path, size) ordered by popularity rank plus a Zipf law, with
//!   presets [`Preset::Rice`] and [`Preset::Ibm`] that match the published statistics of those traces;
//! - [`log`]: access-log parsing (Common, Combined, NASA and EPA variants) into records, and [`log::Trace`] for
//!   replaying the successful GETs of a log;
//! - [`site`]: reproducible test-site generation on disk with a manifest.
//!
//! Invariants: every generator is deterministic given its `u64` seed (the RNG is [`rand_pcg::Pcg64`], made by
//! [`seeded_rng`]); nothing here reads a clock or a global RNG. Every table has a named maximum (see each module).

pub mod log;
pub mod site;
pub mod size;
pub mod workload;
pub mod zipf;

pub use log::{LogRecord, LogStats, Trace};
pub use site::{SiteFile, SiteManifest};
pub use size::SizeDist;
pub use workload::{Preset, Target, Workload};
pub use zipf::Zipf;

/// The RNG every generator in this crate uses.
pub type Rng64 = rand_pcg::Pcg64;

/// A PCG-64 generator seeded from a `u64`: the same seed always gives the same stream.
pub fn seeded_rng(seed: u64) -> Rng64 {
    use rand::SeedableRng;
    rand_pcg::Pcg64::seed_from_u64(seed)
}
