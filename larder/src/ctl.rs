//! `larder ctl` (not built yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CtlArgs {}

pub fn run(_args: CtlArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`larder ctl` is not built yet")
}
