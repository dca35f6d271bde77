//! The state file: the operator's run-time settings ([`Settings`]: policy, containers, node weights and drain
//! flags) on disk, so that a restarted control plane starts where the last one stopped
//! (`larder control --state FILE`, `larder serve --state FILE`). This module owns the file format and the
//! file's I/O; [`crate::state`] stays pure and only hands over and takes back [`Settings`] values.
//!
//! # Format (version 1)
//! Pretty-printed JSON, one object:
//!
//! ```json
//! {
//!   "version": 1,
//!   "policy": { "kind": "lard", "lard": { "t_low": 25, "t_high": 65, "k_ms": 20000 },
//!               "balance_factor": 1.25, "vnodes_per_server": 160, "targets_max": 65536,
//!               "target_idle_ms": 300000 },
//!   "containers": [ { "name": "default", "shares": 1,
//!                     "limits": { "connections_max": 0, "queued_work_max": 0,
//!                                 "cpu_percent_max": 0, "send_rate_bytes_per_second": 0 } } ],
//!   "nodes": [ { "node_id": "10.0.0.7:8080", "weight": 3, "drained": true } ]
//! }
//! ```
//!
//! - `version` is read first; any other value than 1 is refused (a newer larder's file is never half-read).
//! - Every field is required and unknown fields are refused, so a typo is an error, not a silent default.
//! - `policy.kind` is one of lard's names (`wrr`, `lc`, `ch`, `ch-bl`, `lard`, `lard-r`).
//! - `nodes` lists only node ids whose weight is not 1 or that are drained.
//! - A later feature (cluster reservations) adds a top-level array with `#[serde(default)]`: version-1 files
//!   without it stay readable, while an older larder refuses a file that has it (unknown field) instead of
//!   dropping it on its next write.
//!
//! # Loading ([`StateFile::load`], once at start)
//! 1. A missing file is "no saved settings": start from the configuration; the file is created at the first
//!    change. Its directory must exist (checked now, not at the first change).
//! 2. A file larger than [`STATE_FILE_BYTES_MAX`], not UTF-8, not parsable, of another version, or whose values
//!    fail [`Settings::validate`] is an error naming the file and the field; the control plane does not start
//!    (it never falls back to defaults, which would silently undo the operator's changes).
//!
//! # Writing ([`StateFile::save`], after every accepted change)
//! 1. Encode the whole [`Settings`] (at most 311 KB: 256 containers and 1024 node ids, names of 128 bytes).
//! 2. Write it to `.<name>.tmp` in the file's own directory (same file system, so the rename is atomic),
//!    truncating what an earlier crash may have left there, and fsync it.
//! 3. Rename it over the file: a reader (or the next start) sees either the old file or the new one, whole.
//! 4. Fsync the directory, so the rename itself survives a power loss.
//!
//! A failure at any step leaves the old file in place (and at most a stale temporary file, which the next
//! write overwrites); what the control plane does then is in `crate::server` ("State file").
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`STATE_FILE_BYTES_MAX`] | 1 MiB | over three times the largest valid file (311 KB); refuses a wrong path (a log, a disk image) quickly |
//! | containers | 256 ([`crate::state::CONTAINERS_MAX`]) | the state's own table limit |
//! | node ids | 1024 ([`crate::state::NODES_MAX`]) | the state's own registry limit |

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use larder_lard::{LardParams, PolicyConfig, PolicyKind};
use serde::{Deserialize, Serialize};

use crate::state::{
    Container, ContainerLimits, ContainerName, NodeId, NodeSettings, Settings, StateError,
};

/// The one format version this build reads and writes.
pub const STATE_FILE_VERSION: u32 = 1;
/// Largest state file read, in bytes.
pub const STATE_FILE_BYTES_MAX: u64 = 1 << 20;

/// Why the state file could not be read or written. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("state file {path}: cannot {step}: {source}")]
    Io {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "state file {path}: its directory does not exist (the file is created at the first change)"
    )]
    NoDirectory { path: PathBuf },
    #[error("state file {path}: {bytes} bytes, at most {STATE_FILE_BYTES_MAX}")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("state file {path}: {error}")]
    Format { path: PathBuf, error: FormatError },
}

/// Why a state file's text is not a valid version-1 state.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum FormatError {
    /// Not JSON, a missing or unknown field, a wrong type: serde's message names the field, line and column.
    #[error("{0}")]
    Syntax(String),
    #[error("version {found} is not supported; this larder reads version {STATE_FILE_VERSION}")]
    Version { found: u64 },
    #[error("{0}")]
    Invalid(#[from] StateError),
}

/// The file, by path. It holds no handle between calls.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loading steps 1-2 (module docs): `None` when there is no file yet.
    pub fn load(&self) -> Result<Option<Settings>, StateFileError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return if self.directory().is_dir() {
                    Ok(None)
                } else {
                    Err(StateFileError::NoDirectory {
                        path: self.path.clone(),
                    })
                };
            }
            Err(source) => return Err(self.io("open", source)),
        };
        let mut text = String::new();
        let read = file
            .take(STATE_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(|source| self.io("read", source))?;
        if read as u64 > STATE_FILE_BYTES_MAX {
            let bytes = fs::metadata(&self.path).map_or(read as u64, |meta| meta.len());
            return Err(StateFileError::TooLarge {
                path: self.path.clone(),
                bytes,
            });
        }
        decode(&text)
            .map(Some)
            .map_err(|error| StateFileError::Format {
                path: self.path.clone(),
                error,
            })
    }

    /// Writing steps 1-4 (module docs).
    pub fn save(&self, settings: &Settings) -> Result<(), StateFileError> {
        let temporary = self.write_temporary(&encode(settings))?;
        self.commit(&temporary)
    }

    /// Step 2: the new text, complete and on disk, next to the file. Returns the temporary file's path.
    fn write_temporary(&self, text: &str) -> Result<PathBuf, StateFileError> {
        let name = self
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = self.directory().join(format!(".{name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(|source| self.io("create the temporary file", source))?;
        file.write_all(text.as_bytes())
            .map_err(|source| self.io("write the temporary file", source))?;
        file.sync_all()
            .map_err(|source| self.io("fsync the temporary file", source))?;
        Ok(temporary)
    }

    /// Steps 3-4: the rename, then the directory's fsync.
    fn commit(&self, temporary: &Path) -> Result<(), StateFileError> {
        fs::rename(temporary, &self.path).map_err(|source| {
            let _ = fs::remove_file(temporary);
            self.io("rename the temporary file over it", source)
        })?;
        File::open(self.directory())
            .and_then(|directory| directory.sync_all())
            .map_err(|source| self.io("fsync its directory", source))
    }

    fn directory(&self) -> PathBuf {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn io(&self, step: &'static str, source: io::Error) -> StateFileError {
        StateFileError::Io {
            path: self.path.clone(),
            step,
            source,
        }
    }
}

/// The file's text for `settings` (pretty JSON, ending in a newline).
pub fn encode(settings: &Settings) -> String {
    let file = FileV1 {
        version: STATE_FILE_VERSION,
        policy: FilePolicy::from(&settings.policy),
        containers: settings
            .containers
            .iter()
            .map(FileContainer::from)
            .collect(),
        nodes: settings.nodes.iter().map(FileNode::from).collect(),
    };
    let mut text = serde_json::to_string_pretty(&file)
        .expect("plain structs of numbers, strings and booleans always encode");
    text.push('\n');
    text
}

/// Parses and validates a state file's text.
pub fn decode(text: &str) -> Result<Settings, FormatError> {
    let syntax = |error: serde_json::Error| FormatError::Syntax(error.to_string());
    let header: FileHeader = serde_json::from_str(text).map_err(syntax)?;
    if header.version != u64::from(STATE_FILE_VERSION) {
        return Err(FormatError::Version {
            found: header.version,
        });
    }
    let file: FileV1 = serde_json::from_str(text).map_err(syntax)?;
    let kind = file
        .policy
        .kind
        .parse::<PolicyKind>()
        .map_err(|error| StateError::Invalid {
            field: "policy.kind".to_string(),
            reason: error.to_string(),
        })?;
    let targets_max =
        usize::try_from(file.policy.targets_max).map_err(|_| StateError::Invalid {
            field: "policy.targets_max".to_string(),
            reason: "does not fit this machine".to_string(),
        })?;
    let settings = Settings {
        policy: PolicyConfig {
            kind,
            lard: LardParams {
                t_low: file.policy.lard.t_low,
                t_high: file.policy.lard.t_high,
                k_ms: file.policy.lard.k_ms,
            },
            balance_factor: file.policy.balance_factor,
            vnodes_per_server: file.policy.vnodes_per_server,
            targets_max,
            target_idle_ms: file.policy.target_idle_ms,
        },
        containers: file.containers.into_iter().map(Container::from).collect(),
        nodes: file.nodes.into_iter().map(NodeSettings::from).collect(),
    };
    settings.validate()?;
    Ok(settings)
}

/// Only the version, read before the rest (a file of another version may have other fields).
#[derive(Deserialize)]
struct FileHeader {
    version: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u32,
    policy: FilePolicy,
    containers: Vec<FileContainer>,
    nodes: Vec<FileNode>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    kind: String,
    lard: FileLard,
    balance_factor: f64,
    vnodes_per_server: u32,
    targets_max: u64,
    target_idle_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLard {
    t_low: u32,
    t_high: u32,
    k_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContainer {
    name: String,
    shares: u32,
    limits: FileLimits,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    connections_max: u64,
    queued_work_max: u64,
    cpu_percent_max: u32,
    send_rate_bytes_per_second: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    node_id: String,
    weight: u32,
    drained: bool,
}

impl From<&PolicyConfig> for FilePolicy {
    fn from(policy: &PolicyConfig) -> FilePolicy {
        FilePolicy {
            kind: policy.kind.to_string(),
            lard: FileLard {
                t_low: policy.lard.t_low,
                t_high: policy.lard.t_high,
                k_ms: policy.lard.k_ms,
            },
            balance_factor: policy.balance_factor,
            vnodes_per_server: policy.vnodes_per_server,
            targets_max: policy.targets_max as u64,
            target_idle_ms: policy.target_idle_ms,
        }
    }
}

impl From<&Container> for FileContainer {
    fn from(container: &Container) -> FileContainer {
        let limits = &container.limits;
        FileContainer {
            name: container.name.0.clone(),
            shares: container.shares,
            limits: FileLimits {
                connections_max: limits.connections_max,
                queued_work_max: limits.queued_work_max,
                cpu_percent_max: limits.cpu_percent_max,
                send_rate_bytes_per_second: limits.send_rate_bytes_per_second,
            },
        }
    }
}

impl From<FileContainer> for Container {
    fn from(container: FileContainer) -> Container {
        let limits = container.limits;
        Container {
            name: ContainerName(container.name),
            shares: container.shares,
            limits: ContainerLimits {
                connections_max: limits.connections_max,
                queued_work_max: limits.queued_work_max,
                cpu_percent_max: limits.cpu_percent_max,
                send_rate_bytes_per_second: limits.send_rate_bytes_per_second,
            },
        }
    }
}

impl From<&NodeSettings> for FileNode {
    fn from(node: &NodeSettings) -> FileNode {
        FileNode {
            node_id: node.node_id.0.clone(),
            weight: node.weight,
            drained: node.drained,
        }
    }
}

impl From<FileNode> for NodeSettings {
    fn from(node: FileNode) -> NodeSettings {
        NodeSettings {
            node_id: NodeId(node.node_id),
            weight: node.weight,
            drained: node.drained,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn settings() -> Settings {
        Settings {
            policy: PolicyConfig::new(PolicyKind::LardR),
            containers: vec![
                Container::default_container(),
                Container {
                    name: ContainerName("gold".into()),
                    shares: 3,
                    limits: ContainerLimits {
                        connections_max: 1,
                        queued_work_max: 2,
                        cpu_percent_max: 50,
                        send_rate_bytes_per_second: 10_000_000_000,
                    },
                },
            ],
            nodes: vec![NodeSettings {
                node_id: NodeId("10.0.0.7:8080".into()),
                weight: 3,
                drained: true,
            }],
        }
    }

    fn format_error(text: &str) -> FormatError {
        decode(text).expect_err("refused")
    }

    fn kinds() -> impl Strategy<Value = PolicyKind> {
        prop::sample::select(PolicyKind::ALL.to_vec())
    }

    fn containers() -> impl Strategy<Value = Vec<Container>> {
        prop::collection::btree_map(
            "[a-z]{1,12}",
            (
                1u32..=1_000_000,
                0u64..=1 << 20,
                0u32..=100,
                0u64..=10_000_000_000,
            ),
            0..8,
        )
        .prop_map(|table| {
            table
                .into_iter()
                .map(|(name, (shares, connections_max, cpu, rate))| Container {
                    name: ContainerName(name),
                    shares,
                    limits: ContainerLimits {
                        connections_max,
                        queued_work_max: connections_max / 2,
                        cpu_percent_max: cpu,
                        send_rate_bytes_per_second: rate,
                    },
                })
                .collect()
        })
    }

    fn nodes() -> impl Strategy<Value = Vec<NodeSettings>> {
        prop::collection::btree_map("[a-z0-9.:\\-]{1,40}", (1u32..=256, any::<bool>()), 0..8)
            .prop_map(|table| {
                table
                    .into_iter()
                    .map(|(id, (weight, drained))| NodeSettings {
                        node_id: NodeId(id),
                        weight,
                        drained,
                    })
                    .collect()
            })
    }

    proptest! {
        /// Every valid value survives encode → decode unchanged (floats included: serde_json writes the
        /// shortest text that reads back as the same f64).
        #[test]
        fn settings_round_trip_through_the_text(
            kind in kinds(),
            t_low in 1u32..100,
            gap in 1u32..100,
            balance_factor in 1.0f64..10.0,
            containers in containers(),
            nodes in nodes(),
        ) {
            let mut policy = PolicyConfig::new(kind);
            policy.lard.t_low = t_low;
            policy.lard.t_high = t_low + gap;
            policy.balance_factor = balance_factor;
            let settings = Settings { policy, containers, nodes };
            prop_assume!(settings.validate().is_ok());
            prop_assert_eq!(decode(&encode(&settings)), Ok(settings));
        }

        /// Any prefix of a valid file shorter than the whole is refused, never read as something else.
        #[test]
        fn a_truncated_file_is_refused(cut in 0usize..1000) {
            let text = encode(&settings());
            let cut = cut % text.trim_end().len();
            prop_assert!(decode(&text[..cut]).is_err(), "prefix of {} bytes accepted", cut);
        }
    }

    #[test]
    fn the_file_round_trips_on_disk_and_a_missing_file_is_none() {
        let directory = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(directory.path().join("state.json"));
        assert!(file.load().expect("missing is fine").is_none());
        file.save(&settings()).expect("save");
        assert_eq!(file.load().expect("load"), Some(settings()));
        let names: Vec<String> = fs::read_dir(directory.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file is left behind");
    }

    #[test]
    fn errors_name_the_field() {
        let text = encode(&settings());
        let error = format_error(&text.replace("\"shares\": 3", "\"sharez\": 3"));
        assert!(
            matches!(&error, FormatError::Syntax(message) if message.contains("unknown field `sharez`")),
            "{error}"
        );
        let error = format_error(&text.replace("\"drained\": true", "\"drained\": 1"));
        assert!(
            matches!(&error, FormatError::Syntax(message) if message.contains("line")),
            "{error}"
        );
        let error = format_error(&text.replace("\"weight\": 3", "\"weight\": 0"));
        assert!(
            matches!(&error, FormatError::Invalid(StateError::Invalid { field, .. }) if field == "nodes[0].weight"),
            "{error}"
        );
        let error = format_error(&text.replace("\"lard-r\"", "\"fastest\""));
        assert!(
            matches!(&error, FormatError::Invalid(StateError::Invalid { field, .. }) if field == "policy.kind"),
            "{error}"
        );
        let error = format_error(&text.replace("\"version\": 1", "\"version\": 2"));
        assert_eq!(error, FormatError::Version { found: 2 });
        let error = format_error(&text.replace("  \"version\": 1,\n", ""));
        assert!(
            matches!(&error, FormatError::Syntax(message) if message.contains("missing field `version`")),
            "{error}"
        );
    }

    #[test]
    fn a_corrupted_or_oversized_file_is_refused_naming_the_file() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("state.json");
        let file = StateFile::new(&path);
        let text = encode(&settings());
        fs::write(&path, &text[..text.len() / 2]).expect("write");
        let error = file.load().expect_err("truncated");
        assert!(matches!(error, StateFileError::Format { .. }), "{error}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );

        fs::write(&path, [0xff, 0xfe, b'{']).expect("write");
        let error = file.load().expect_err("not UTF-8");
        assert!(
            matches!(error, StateFileError::Io { step: "read", .. }),
            "{error}"
        );

        let large = vec![b' '; STATE_FILE_BYTES_MAX as usize + 1];
        fs::write(&path, large).expect("write");
        let error = file.load().expect_err("too large");
        assert!(
            matches!(error, StateFileError::TooLarge { bytes, .. } if bytes == STATE_FILE_BYTES_MAX + 1),
            "{error}"
        );

        let missing = StateFile::new(directory.path().join("no-such-directory/state.json"));
        let error = missing.load().expect_err("no directory");
        assert!(
            matches!(error, StateFileError::NoDirectory { .. }),
            "{error}"
        );
    }

    /// The limit has room: the largest valid settings (every table full, every name and number at its longest)
    /// encode well under it, so any file the control plane writes is one it reads back.
    #[test]
    fn the_largest_valid_file_fits_under_the_read_limit() {
        use crate::state::{
            CONTAINERS_MAX, NAME_BYTES_MAX, NODES_MAX, SHARES_MAX, TASKS_MAX_LIMIT,
        };
        let name = |index: usize| format!("{index:0>width$}", width = NAME_BYTES_MAX);
        let largest = Settings {
            policy: PolicyConfig::default(),
            containers: (0..CONTAINERS_MAX)
                .map(|index| Container {
                    name: ContainerName(name(index)),
                    shares: SHARES_MAX,
                    limits: ContainerLimits {
                        connections_max: u64::from(TASKS_MAX_LIMIT),
                        queued_work_max: u64::from(TASKS_MAX_LIMIT),
                        cpu_percent_max: 100,
                        send_rate_bytes_per_second: 10_000_000_000,
                    },
                })
                .collect(),
            nodes: (0..NODES_MAX)
                .map(|index| NodeSettings {
                    node_id: NodeId(name(index)),
                    weight: 256,
                    drained: true,
                })
                .collect(),
        };
        largest.validate().expect("valid");
        let bytes = encode(&largest).len() as u64;
        assert!(
            bytes * 2 < STATE_FILE_BYTES_MAX,
            "{bytes} bytes: the limit of {STATE_FILE_BYTES_MAX} leaves too little room"
        );
        assert_eq!(decode(&encode(&largest)), Ok(largest));
    }

    /// A crash after the temporary file is written and before the rename: the old file is whole and loads; the
    /// next save overwrites the leftover and completes.
    #[test]
    fn a_failure_before_the_rename_leaves_the_old_file() {
        let directory = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(directory.path().join("state.json"));
        let old = settings();
        file.save(&old).expect("save");
        let mut new = settings();
        new.containers[1].shares = 99;

        let leftover = file.write_temporary(&encode(&new)).expect("step 2");
        assert_eq!(
            file.load().expect("load"),
            Some(old.clone()),
            "before the rename"
        );
        assert!(leftover.exists());

        // A failing write: the temporary file's path is taken by a directory.
        fs::remove_file(&leftover).expect("remove");
        fs::create_dir(&leftover).expect("mkdir");
        let error = file
            .save(&new)
            .expect_err("cannot create the temporary file");
        assert!(
            matches!(
                error,
                StateFileError::Io {
                    step: "create the temporary file",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(
            file.load().expect("load"),
            Some(old),
            "a failed save keeps the old file"
        );

        fs::remove_dir(&leftover).expect("rmdir");
        file.save(&new).expect("save");
        assert_eq!(file.load().expect("load"), Some(new));
    }
}
