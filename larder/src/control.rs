//! `larder control` (not built yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ControlArgs {}

pub fn run(_args: ControlArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`larder control` is not built yet")
}
