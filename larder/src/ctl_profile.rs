//! `larder ctl profile`: asks the control plane for a CPU profile of one node (`Control.ProfileNode`) and
//! writes it to `--out` as folded stacks (`frame;frame;frame count` lines, for inferno, flamegraph.pl or
//! speedscope), or as an SVG flame graph (inferno's writer) when the file name ends in `.svg`.
//!
//! The flags are checked before anything is sent: `--seconds` in 1..=60 (larder-profile's bounds) and an
//! existing directory for `--out`. The file is written whole through a temporary file beside it and a
//! rename, so a failed profile or write leaves no partial file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use larder_control::proto::v1 as pb;

/// The flags of `larder ctl profile`.
#[derive(Debug, clap::Args)]
pub struct ProfileFlags {
    /// The node's id: its HTTP address, as `list-nodes` shows it.
    #[arg(long = "node", value_name = "ID")]
    pub node_id: String,
    /// The shard to sample (0-based); without it, every shard of the node.
    #[arg(long)]
    pub shard: Option<u32>,
    /// How long to sample, 1..=60.
    #[arg(long)]
    pub seconds: u32,
    /// Where to write the profile: folded stacks, or an SVG flame graph if it ends in `.svg`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// What `--out` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Folded,
    Svg,
}

impl ProfileFlags {
    /// The request, once the flags are valid.
    pub fn to_request(&self) -> anyhow::Result<pb::ProfileNodeRequest> {
        larder_profile::validate_seconds(self.seconds).context("--seconds")?;
        let parent = match self.out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            anyhow::bail!(
                "--out {}: {} is not a directory",
                self.out.display(),
                parent.display()
            );
        }
        Ok(pb::ProfileNodeRequest {
            node_id: self.node_id.clone(),
            shard: self.shard,
            seconds: self.seconds,
        })
    }

    pub fn format(&self) -> OutputFormat {
        match self.out.extension() {
            Some(extension) if extension.eq_ignore_ascii_case("svg") => OutputFormat::Svg,
            _ => OutputFormat::Folded,
        }
    }
}

/// The bytes of `profile` in `format`; `title` heads the flame graph.
pub fn render(
    profile: &pb::ProfileData,
    format: OutputFormat,
    title: &str,
) -> anyhow::Result<Vec<u8>> {
    let lines: Vec<String> = profile
        .stacks
        .iter()
        .map(|stack| format!("{} {}", stack.stack, stack.count))
        .collect();
    match format {
        OutputFormat::Folded => {
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            Ok(text.into_bytes())
        }
        OutputFormat::Svg => {
            let mut options = inferno::flamegraph::Options::default();
            options.title = title.to_string();
            options.count_name = "samples".to_string();
            let mut svg = Vec::new();
            if lines.is_empty() {
                // inferno refuses an empty profile; an idle shard gives one.
                options.subtitle = Some("no samples: the sampled threads used no CPU".to_string());
                inferno::flamegraph::from_lines(&mut options, ["[no samples] 1"], &mut svg)
            } else {
                inferno::flamegraph::from_lines(
                    &mut options,
                    lines.iter().map(String::as_str),
                    &mut svg,
                )
            }
            .context("drawing the flame graph")?;
            Ok(svg)
        }
    }
}

/// Writes `bytes` to `path` whole: a temporary file beside it, then a rename.
pub fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    let outcome = std::fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&temporary, path));
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    outcome.with_context(|| format!("--out {}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(seconds: u32, out: &str) -> ProfileFlags {
        ProfileFlags {
            node_id: "127.0.0.1:8080".to_string(),
            shard: Some(0),
            seconds,
            out: PathBuf::from(out),
        }
    }

    fn profile() -> pb::ProfileData {
        pb::ProfileData {
            stacks: vec![
                pb::FoldedStack {
                    stack: "larder-shard-0;main;serve".to_string(),
                    count: 3,
                },
                pb::FoldedStack {
                    stack: "larder-shard-0;main".to_string(),
                    count: 1,
                },
            ],
            samples: 4,
            samples_lost: 0,
            frequency_hz: 997,
            duration_ms: 1000,
        }
    }

    #[test]
    fn seconds_outside_one_to_sixty_are_refused_naming_the_flag() {
        for seconds in [0, 61] {
            let error = flags(seconds, "x.folded").to_request().unwrap_err();
            let text = format!("{error:#}");
            assert!(
                text.contains("--seconds") && text.contains(&seconds.to_string()),
                "{text}"
            );
        }
        assert_eq!(flags(60, "x.folded").to_request().unwrap().seconds, 60);
    }

    #[test]
    fn an_out_file_in_a_missing_directory_is_refused_naming_the_flag() {
        let error = flags(1, "/nonexistent-larder-dir/x.svg")
            .to_request()
            .unwrap_err();
        assert!(format!("{error:#}").contains("--out"), "{error:#}");
    }

    #[test]
    fn the_extension_chooses_the_format() {
        assert_eq!(flags(1, "a.svg").format(), OutputFormat::Svg);
        assert_eq!(flags(1, "a.SVG").format(), OutputFormat::Svg);
        assert_eq!(flags(1, "a.folded").format(), OutputFormat::Folded);
        assert_eq!(flags(1, "a").format(), OutputFormat::Folded);
    }

    #[test]
    fn folded_output_is_one_line_per_stack() {
        let text = render(&profile(), OutputFormat::Folded, "t").unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "larder-shard-0;main;serve 3\nlarder-shard-0;main 1\n"
        );
    }

    #[test]
    fn svg_output_names_the_frames() {
        for data in [profile(), pb::ProfileData::default()] {
            let svg =
                String::from_utf8(render(&data, OutputFormat::Svg, "a title").unwrap()).unwrap();
            assert!(svg.contains("<svg"), "{svg}");
            assert!(svg.trim_end().ends_with("</svg>"));
        }
        let svg = String::from_utf8(render(&profile(), OutputFormat::Svg, "t").unwrap()).unwrap();
        assert!(svg.contains("serve"));
    }
}
