//! `larder dispatch` (not built yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DispatchArgs {}

pub fn run(_args: DispatchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`larder dispatch` is not built yet")
}
