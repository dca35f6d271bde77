//! `--cores all|N` and `--cpus LIST`: the two flags that place shards, with one meaning in every command that
//! runs shards (`serve`, `dispatch`; `larder-bench` spells its threads' flags the same way).
//!
//! `--cores` says how many (one shard per core: `all` = one per physical core, `N` = N spread over cores before
//! hyperthreads); `--cpus` says exactly which CPUs (`0`, `0,2`, `0-3`; a lone number is one CPU). They exclude
//! each other. Parsing is `larder_runtime::topology::ShardSelection`'s; this module only names the flags.

use anyhow::Context as _;
use larder_runtime::ShardSelection;

#[derive(Clone, Debug, clap::Args)]
pub struct CoreFlags {
    /// How many shards, one per core: `all` (one per physical core) or a count (spread over cores before
    /// hyperthreads) [default: all].
    #[arg(long, value_name = "all|N", conflicts_with = "cpus")]
    cores: Option<String>,
    /// Which CPUs run the shards, one shard each: a CPU list like `0`, `0,2` or `0-3` (instead of --cores).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
}

impl CoreFlags {
    /// `--cores`, as given.
    pub fn cores(&self) -> Option<&str> {
        self.cores.as_deref()
    }

    /// `--cpus`, as given.
    pub fn cpus(&self) -> Option<&str> {
        self.cpus.as_deref()
    }

    /// The selection the flags give, `None` when neither is set; an error names the flag.
    pub fn selection(&self) -> anyhow::Result<Option<ShardSelection>> {
        let flag = if self.cpus.is_some() {
            "--cpus"
        } else {
            "--cores"
        };
        ShardSelection::from_settings(self.cores.as_deref(), self.cpus.as_deref()).context(flag)
    }
}
