//! `ServeConfig`: every setting of `larder serve`, from defaults, a TOML file and flags, validated once at start.
//!
//! Owns: the typed settings and their validation. Errors name the setting (`keepalive_timeout_ms = 0: must be at
//! least 1`), so a wrong file is fixed from the message alone. Flags override the file; the file overrides the
//! defaults (the caller applies flags to the value returned by [`ServeConfig::from_toml_str`]).
//!
//! Defaults serve a newcomer: listen on 127.0.0.1:8080, one shard per physical core, ROOT ".", a 256 MiB cache
//! split across the shards, LARD, nginx's timeouts (75 s keep-alive idle, 60 s header, 60 s write stall), access
//! log off, dotfiles hidden, one container "default" that takes every request.
//!
//! Limits (all settings, with their ranges, in [`ServeConfig::validate`]): `connections_max` per shard
//! (default 65,536), `containers` at most [`CONTAINERS_MAX`] (64), classification rules at most
//! [`CLASSIFY_RULES_MAX`] (256), `cache_mb` at most 1 TiB, a container's name 1..=128 bytes of ASCII letters,
//! digits and `._:-` (the name rule of `larder_runtime::name`, the control plane's too), its `shares` in
//! 1..=1,000,000, its `tasks_max` in 1..=1,048,576, its `cpu_percent_max` at most 100 (percent of a shard) and its
//! `send_rate_bytes_per_second` at most 10,000,000,000 (10 GB/s): the container scheduler's own ranges, checked
//! here so a bad file fails with the setting's name before any shard starts.
//!
//! # Reload ([`ServeConfig::plan_reload`])
//! A running node re-reads its file (SIGHUP, `larder ctl reload-node`). The plan compares the file with the
//! configuration in force:
//! - live (the file's value applies): `policy`, the timeouts, `keepalive_requests_max`, `uri_bytes_max`,
//!   `header_bytes_max`, `ranges_max`, `connections_max`, `allow_dotfiles`, `classify`, `access_log` (reopened
//!   at every reload, for log rotation), and each container's `shares`, `tasks_max`, `cpu_percent_max`,
//!   `send_rate_bytes_per_second`; a container new in the file is added;
//! - kept at the running value and named ([`KeptSetting`]): `listen`, `cores`, `io_driver` (the shards and
//!   their sockets), `cache_mb`, `cache_read`, `revalidate_interval_ms` (each shard's cache is built once),
//!   `root` (cached objects belong to it), `shard_header`, `accept_shards`, and a container the file no longer
//!   has (the scheduler cannot remove one; it stays with its running settings).
//!
//! Containers keep their order: the running ones first, the added ones after them, because a connection names
//! its container by index. The result is validated again (at most [`CONTAINERS_MAX`] containers, kept ones
//! included).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::cache::ReadMode;
use larder_lard::PolicyKind;
use larder_runtime::container::{
    CPU_PERCENT_MAX_LIMIT, SEND_RATE_BYTES_PER_SECOND_LIMIT, SHARES_MAX, TASKS_MAX_LIMIT,
};
use larder_runtime::name::check_container_name;
pub use larder_runtime::pool::IoDriver;
use larder_runtime::topology::ShardSelection;
use serde::{Deserialize, Serialize};

/// Most containers in one configuration.
pub const CONTAINERS_MAX: usize = 64;
/// Most classification rules.
pub const CLASSIFY_RULES_MAX: usize = 256;
/// Name of the container a request lands in when no rule matches.
pub const DEFAULT_CONTAINER: &str = "default";

/// Access log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Common Log Format.
    Common,
    /// Combined Log Format (CLF + Referer + User-Agent).
    Combined,
}

/// Where and how each shard writes its access log (file `<path>.<shard>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub path: PathBuf,
    pub format: LogFormat,
}

/// One resource container of the node (created on every shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerConfig {
    pub name: String,
    /// CPU shares (proportional).
    pub shares: u32,
    /// Connections served at once in this container per shard; one more gets 503 + Retry-After.
    pub tasks_max: u32,
    /// Most of each shard's CPU the container may use, in percent (1..=100), even on an idle shard; 0 = no cap.
    pub cpu_percent_max: u32,
    /// Per-connection send rate cap (bytes/s, like nginx's `limit_rate`); 0 = none.
    pub send_rate_bytes_per_second: u64,
}

/// A client network, `address/prefix_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V4(net), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| prefix_matches(&net.octets(), &ip.octets(), self.prefix_len)),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn prefix_matches(network: &[u8], address: &[u8], prefix_len: u8) -> bool {
    let full_bytes = usize::from(prefix_len / 8);
    let rest_bits = prefix_len % 8;
    if network[..full_bytes] != address[..full_bytes] {
        return false;
    }
    if rest_bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest_bits);
    network[full_bytes] & mask == address[full_bytes] & mask
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl FromStr for Network {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || {
            invalid(
                "classify.network",
                text,
                "must be ADDRESS/PREFIX_LEN, e.g. 10.0.0.0/8",
            )
        };
        let (address, prefix_len) = text.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix_len: u8 = prefix_len.parse().map_err(|_| bad())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > bits {
            return Err(bad());
        }
        Ok(Network {
            address,
            prefix_len,
        })
    }
}

/// A classification rule: every given condition must hold; the first matching rule wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifyRule {
    pub container: String,
    /// Host without port, compared case-insensitively.
    pub host: Option<String>,
    /// Prefix of the normalised path.
    pub path_prefix: Option<String>,
    pub network: Option<Network>,
}

/// Every setting of `larder serve`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// The shards' CPUs: `cores = "all"` or a count, or `cpus = "0-3"` (a CPU list) in the file; not both.
    pub cores: ShardSelection,
    pub io_driver: IoDriver,
    /// Cache budget for the whole node in MiB, split evenly across shards.
    pub cache_mb: u64,
    /// How a miss reads its file (`cache_read`): `direct` (O_DIRECT from 64 KiB, else buffered and dropped from the
    /// page cache: one copy, the default), `drop-cache` (buffered, dropped), or `page-cache` (buffered, kept: the
    /// kernel's page cache becomes a second level behind the shard caches, at the price of a second copy; for a
    /// cache budget far below the free memory and a working set larger than the budget).
    pub cache_read: ReadMode,
    pub policy: PolicyKind,
    pub root: PathBuf,
    pub keepalive_timeout_ms: u64,
    pub keepalive_requests_max: u32,
    pub header_timeout_ms: u64,
    /// A response whose write makes no progress for this long is abandoned (connection closed).
    pub write_timeout_ms: u64,
    pub uri_bytes_max: usize,
    pub header_bytes_max: usize,
    pub ranges_max: usize,
    /// Connections per shard; the accepting shard closes new ones beyond it.
    pub connections_max: usize,
    pub allow_dotfiles: bool,
    /// Cached objects older than this are re-`stat`ed.
    pub revalidate_interval_ms: u64,
    pub access_log: Option<AccessLogConfig>,
    /// Add `X-Larder-Shard: <n>` to responses (tests, debugging).
    pub shard_header: bool,
    /// Shards that accept connections (empty: all). The others serve only handed-off connections.
    pub accept_shards: Vec<u32>,
    pub containers: Vec<ContainerConfig>,
    pub classify: Vec<ClassifyRule>,
    /// Distributed mode: route each target to the node the control plane assigns it (`crate::cluster`).
    pub cluster: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cores: ShardSelection::All,
            io_driver: IoDriver::Auto,
            cache_mb: 256,
            cache_read: ReadMode::DirectOrDropCache,
            policy: PolicyKind::Lard,
            root: PathBuf::from("."),
            keepalive_timeout_ms: 75_000,
            keepalive_requests_max: 1000,
            header_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            uri_bytes_max: 8 * 1024,
            header_bytes_max: 16 * 1024,
            ranges_max: crate::http::range::RANGES_MAX,
            connections_max: 65_536,
            allow_dotfiles: false,
            revalidate_interval_ms: 1000,
            access_log: None,
            shard_header: false,
            accept_shards: Vec::new(),
            containers: vec![ContainerConfig {
                name: DEFAULT_CONTAINER.to_string(),
                shares: 100,
                tasks_max: 65_536,
                cpu_percent_max: 0,
                send_rate_bytes_per_second: 0,
            }],
            classify: Vec::new(),
            cluster: false,
        }
    }
}

/// A setting with a bad value, or a file that is not valid TOML.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting} = {value}: {reason}")]
    Invalid {
        setting: &'static str,
        value: String,
        reason: &'static str,
    },
    /// `cores` (a count or `all`) or `cpus` (a CPU list) does not parse, or both are set.
    #[error("{setting}: {reason}")]
    ShardSelection {
        setting: &'static str,
        reason: larder_runtime::topology::ShardSelectionParseError,
    },
    #[error("config file: {0}")]
    Toml(String),
}

fn invalid(
    setting: &'static str,
    value: impl std::fmt::Display,
    reason: &'static str,
) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_string(),
        reason,
    }
}

/// Parses `auto`, `uring` or `epoll`.
pub fn parse_io_driver(name: &str) -> Result<IoDriver, ConfigError> {
    name.parse()
        .map_err(|_| invalid("io_driver", name, "must be auto, uring or epoll"))
}

/// Parses `direct`, `drop-cache` or `page-cache` (the `cache_read` setting).
pub fn parse_cache_read(name: &str) -> Result<ReadMode, ConfigError> {
    match name {
        "direct" => Ok(ReadMode::DirectOrDropCache),
        "drop-cache" => Ok(ReadMode::DropCache),
        "page-cache" => Ok(ReadMode::PageCache),
        _ => Err(invalid(
            "cache_read",
            name,
            "must be direct, drop-cache or page-cache",
        )),
    }
}

/// The name [`parse_cache_read`] reads back.
pub fn cache_read_name(mode: ReadMode) -> &'static str {
    match mode {
        ReadMode::DirectOrDropCache => "direct",
        ReadMode::DropCache => "drop-cache",
        ReadMode::PageCache => "page-cache",
    }
}

/// Parses the CLI policy names: `lard`, `lard-r`, `wrr`, `hash` (= consistent hashing), and lard's own names.
pub fn parse_policy(name: &str) -> Result<PolicyKind, ConfigError> {
    match name {
        "hash" => Ok(PolicyKind::ConsistentHash),
        other => other
            .parse()
            .map_err(|_| invalid("policy", name, "must be lard, lard-r, wrr or hash")),
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    cores: Option<String>,
    cpus: Option<String>,
    io_driver: Option<String>,
    cache_mb: Option<u64>,
    cache_read: Option<String>,
    policy: Option<String>,
    root: Option<PathBuf>,
    keepalive_timeout_ms: Option<u64>,
    keepalive_requests_max: Option<u32>,
    header_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    uri_bytes_max: Option<usize>,
    header_bytes_max: Option<usize>,
    ranges_max: Option<usize>,
    connections_max: Option<usize>,
    allow_dotfiles: Option<bool>,
    revalidate_interval_ms: Option<u64>,
    shard_header: Option<bool>,
    accept_shards: Option<Vec<u32>>,
    access_log: Option<RawAccessLog>,
    #[serde(default)]
    containers: Vec<RawContainer>,
    #[serde(default)]
    classify: Vec<RawRule>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    path: PathBuf,
    format: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: String,
    shares: Option<u32>,
    tasks_max: Option<u32>,
    cpu_percent_max: Option<u32>,
    send_rate_bytes_per_second: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    container: String,
    host: Option<String>,
    path_prefix: Option<String>,
    network: Option<String>,
}

impl ServeConfig {
    /// Reads a TOML file's settings over the defaults and validates the result.
    pub fn from_toml_str(text: &str) -> Result<ServeConfig, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|error| ConfigError::Toml(error.to_string()))?;
        let mut config = ServeConfig::default();
        if let Some(listen) = raw.listen {
            config.listen = listen
                .parse()
                .map_err(|_| invalid("listen", &listen, "must be IP:PORT, e.g. 127.0.0.1:8080"))?;
        }
        match ShardSelection::from_settings(raw.cores.as_deref(), raw.cpus.as_deref()) {
            Ok(Some(selection)) => config.cores = selection,
            Ok(None) => {}
            Err(reason) => {
                let setting = match (&raw.cores, &raw.cpus) {
                    (Some(_), Some(_)) => "cores and cpus",
                    (Some(_), None) => "cores",
                    _ => "cpus",
                };
                return Err(ConfigError::ShardSelection { setting, reason });
            }
        }
        if let Some(driver) = raw.io_driver {
            config.io_driver = parse_io_driver(&driver)?;
        }
        if let Some(policy) = raw.policy {
            config.policy = parse_policy(&policy)?;
        }
        if let Some(read) = raw.cache_read {
            config.cache_read = parse_cache_read(&read)?;
        }
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(value) = raw.$field { config.$field = value; } )* };
        }
        take!(
            cache_mb,
            root,
            keepalive_timeout_ms,
            keepalive_requests_max,
            header_timeout_ms,
            write_timeout_ms,
            uri_bytes_max,
            header_bytes_max,
            ranges_max,
            connections_max,
            allow_dotfiles,
            revalidate_interval_ms,
            shard_header,
            accept_shards
        );
        if let Some(log) = raw.access_log {
            let format = match log.format.as_deref() {
                None | Some("combined") => LogFormat::Combined,
                Some("common") => LogFormat::Common,
                Some(other) => {
                    return Err(invalid(
                        "access_log.format",
                        other,
                        "must be common or combined",
                    ))
                }
            };
            config.access_log = Some(AccessLogConfig {
                path: log.path,
                format,
            });
        }
        for container in raw.containers {
            let defaults = &ServeConfig::default().containers[0];
            let spec = ContainerConfig {
                shares: container.shares.unwrap_or(defaults.shares),
                tasks_max: container.tasks_max.unwrap_or(defaults.tasks_max),
                cpu_percent_max: container
                    .cpu_percent_max
                    .unwrap_or(defaults.cpu_percent_max),
                send_rate_bytes_per_second: container
                    .send_rate_bytes_per_second
                    .unwrap_or(defaults.send_rate_bytes_per_second),
                name: container.name,
            };
            match config
                .containers
                .iter_mut()
                .find(|known| known.name == spec.name)
            {
                Some(known) => *known = spec,
                None => config.containers.push(spec),
            }
        }
        for rule in raw.classify {
            config.classify.push(ClassifyRule {
                container: rule.container,
                host: rule.host,
                path_prefix: rule.path_prefix,
                network: rule.network.as_deref().map(str::parse).transpose()?,
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting's range; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn at_least<T: PartialOrd + std::fmt::Display>(
            setting: &'static str,
            value: T,
            min: T,
            reason: &'static str,
        ) -> Result<(), ConfigError> {
            if value < min {
                return Err(invalid(setting, value, reason));
            }
            Ok(())
        }
        at_least("cache_mb", self.cache_mb, 1, "must be at least 1")?;
        if self.cache_mb > 1 << 20 {
            return Err(invalid(
                "cache_mb",
                self.cache_mb,
                "must be at most 1048576 (1 TiB)",
            ));
        }
        at_least(
            "keepalive_timeout_ms",
            self.keepalive_timeout_ms,
            1,
            "must be at least 1",
        )?;
        at_least(
            "keepalive_requests_max",
            self.keepalive_requests_max,
            1,
            "must be at least 1",
        )?;
        at_least(
            "header_timeout_ms",
            self.header_timeout_ms,
            1,
            "must be at least 1",
        )?;
        at_least(
            "write_timeout_ms",
            self.write_timeout_ms,
            1,
            "must be at least 1",
        )?;
        at_least(
            "uri_bytes_max",
            self.uri_bytes_max,
            16,
            "must be at least 16",
        )?;
        at_least(
            "header_bytes_max",
            self.header_bytes_max,
            64,
            "must be at least 64",
        )?;
        if self.header_bytes_max > larder_runtime::handoff::ALREADY_READ_BYTES_MAX {
            return Err(invalid(
                "header_bytes_max",
                self.header_bytes_max,
                "must be at most 65536 (a handoff carries the bytes read)",
            ));
        }
        if self.uri_bytes_max > self.header_bytes_max {
            return Err(invalid(
                "uri_bytes_max",
                self.uri_bytes_max,
                "must not exceed header_bytes_max",
            ));
        }
        at_least("ranges_max", self.ranges_max, 1, "must be at least 1")?;
        at_least(
            "connections_max",
            self.connections_max,
            1,
            "must be at least 1",
        )?;
        at_least(
            "revalidate_interval_ms",
            self.revalidate_interval_ms,
            1,
            "must be at least 1",
        )?;
        if self.containers.len() > CONTAINERS_MAX {
            return Err(invalid(
                "containers",
                self.containers.len(),
                "at most 64 containers",
            ));
        }
        for container in &self.containers {
            if check_container_name(&container.name).is_err() {
                return Err(invalid(
                    "containers.name",
                    format_args!("{:?}", container.name),
                    "must be 1..=128 bytes of ASCII letters, digits and ._:-",
                ));
            }
            if !(1..=SHARES_MAX).contains(&container.shares) {
                return Err(invalid(
                    "containers.shares",
                    container.shares,
                    "must be in 1..=1000000",
                ));
            }
            if !(1..=TASKS_MAX_LIMIT).contains(&container.tasks_max) {
                return Err(invalid(
                    "containers.tasks_max",
                    container.tasks_max,
                    "must be in 1..=1048576",
                ));
            }
            if container.cpu_percent_max > CPU_PERCENT_MAX_LIMIT {
                return Err(invalid(
                    "containers.cpu_percent_max",
                    container.cpu_percent_max,
                    "must be at most 100 (percent of a shard; 0 = no cap)",
                ));
            }
            if container.send_rate_bytes_per_second > SEND_RATE_BYTES_PER_SECOND_LIMIT {
                return Err(invalid(
                    "containers.send_rate_bytes_per_second",
                    container.send_rate_bytes_per_second,
                    "must be at most 10000000000 (10 GB/s; 0 = none)",
                ));
            }
        }
        if self.classify.len() > CLASSIFY_RULES_MAX {
            return Err(invalid(
                "classify",
                self.classify.len(),
                "at most 256 rules",
            ));
        }
        for rule in &self.classify {
            if !self
                .containers
                .iter()
                .any(|container| container.name == rule.container)
            {
                return Err(invalid(
                    "classify.container",
                    &rule.container,
                    "names no container",
                ));
            }
        }
        Ok(())
    }

    /// The index (in `containers`) of the container for a request; the default container when no rule matches.
    pub fn classify(&self, host: Option<&[u8]>, path: &[u8], client: IpAddr) -> usize {
        if self.classify.is_empty() {
            return self.default_container_index();
        }
        let host = host.map(|host| match host.iter().rposition(|&byte| byte == b':') {
            Some(colon) if !host.ends_with(b"]") => &host[..colon],
            _ => host,
        });
        let rule = self.classify.iter().find(|rule| {
            rule.host.as_ref().is_none_or(|want| {
                host.is_some_and(|host| host.eq_ignore_ascii_case(want.as_bytes()))
            }) && rule
                .path_prefix
                .as_ref()
                .is_none_or(|prefix| path.starts_with(prefix.as_bytes()))
                && rule.network.is_none_or(|network| network.contains(client))
        });
        match rule {
            Some(rule) => self
                .containers
                .iter()
                .position(|container| container.name == rule.container)
                .unwrap_or(0),
            None => self.default_container_index(),
        }
    }

    /// Every file setting as TOML that [`ServeConfig::from_toml_str`] reads back to this configuration
    /// (`larder serve --check-config` prints it). `cluster` is a flag, not a file setting: it is not included.
    pub fn to_toml(&self) -> String {
        let (cores, cpus) = self.cores.to_settings();
        let raw = RawConfig {
            listen: Some(self.listen.to_string()),
            cores,
            cpus,
            io_driver: Some(self.io_driver.to_string()),
            cache_mb: Some(self.cache_mb),
            cache_read: Some(cache_read_name(self.cache_read).to_string()),
            policy: Some(self.policy.as_str().to_string()),
            root: Some(self.root.clone()),
            keepalive_timeout_ms: Some(self.keepalive_timeout_ms),
            keepalive_requests_max: Some(self.keepalive_requests_max),
            header_timeout_ms: Some(self.header_timeout_ms),
            write_timeout_ms: Some(self.write_timeout_ms),
            uri_bytes_max: Some(self.uri_bytes_max),
            header_bytes_max: Some(self.header_bytes_max),
            ranges_max: Some(self.ranges_max),
            connections_max: Some(self.connections_max),
            allow_dotfiles: Some(self.allow_dotfiles),
            revalidate_interval_ms: Some(self.revalidate_interval_ms),
            shard_header: Some(self.shard_header),
            accept_shards: Some(self.accept_shards.clone()),
            access_log: self.access_log.as_ref().map(|log| RawAccessLog {
                path: log.path.clone(),
                format: Some(
                    match log.format {
                        LogFormat::Common => "common",
                        LogFormat::Combined => "combined",
                    }
                    .to_string(),
                ),
            }),
            containers: self
                .containers
                .iter()
                .map(|container| RawContainer {
                    name: container.name.clone(),
                    shares: Some(container.shares),
                    tasks_max: Some(container.tasks_max),
                    cpu_percent_max: Some(container.cpu_percent_max),
                    send_rate_bytes_per_second: Some(container.send_rate_bytes_per_second),
                })
                .collect(),
            classify: self
                .classify
                .iter()
                .map(|rule| RawRule {
                    container: rule.container.clone(),
                    host: rule.host.clone(),
                    path_prefix: rule.path_prefix.clone(),
                    network: rule.network.map(|network| network.to_string()),
                })
                .collect(),
        };
        // Every field is a string, number, bool, array or table of those: serialising cannot fail.
        toml::to_string(&raw).expect("a ServeConfig serialises as TOML")
    }

    /// What reloading `file` into a node running `self` does (module docs, "Reload"): the configuration that
    /// comes into force, the settings that change live and those kept at their running value. `file` is the
    /// new file's settings (flags applied), already valid on its own; the result is validated again.
    pub fn plan_reload(&self, file: &ServeConfig) -> Result<ReloadPlan, ConfigError> {
        let mut next = file.clone();
        let mut applied = Vec::new();
        let mut kept = Vec::new();
        // Not live: the running value stays (named, with both values).
        macro_rules! keep {
            ($($field:ident: $show:expr),* $(,)?) => { $(
                if next.$field != self.$field {
                    let show = $show;
                    kept.push(KeptSetting {
                        setting: stringify!($field).to_string(),
                        running: show(&self.$field),
                        file: show(&next.$field),
                    });
                    next.$field = self.$field.clone();
                }
            )* };
        }
        keep!(
            listen: |value: &SocketAddr| value.to_string(),
            cores: |value: &ShardSelection| value.to_string(),
            io_driver: |value: &IoDriver| value.to_string(),
            cache_mb: |value: &u64| value.to_string(),
            cache_read: |value: &ReadMode| cache_read_name(*value).to_string(),
            root: |value: &PathBuf| value.display().to_string(),
            revalidate_interval_ms: |value: &u64| value.to_string(),
            shard_header: |value: &bool| value.to_string(),
            accept_shards: |value: &Vec<u32>| format!("{value:?}"),
            cluster: |value: &bool| value.to_string(),
        );
        // Live: named when they change.
        macro_rules! live {
            ($($field:ident),* $(,)?) => { $(
                if next.$field != self.$field {
                    applied.push(stringify!($field).to_string());
                }
            )* };
        }
        live!(
            policy,
            keepalive_timeout_ms,
            keepalive_requests_max,
            header_timeout_ms,
            write_timeout_ms,
            uri_bytes_max,
            header_bytes_max,
            ranges_max,
            connections_max,
            allow_dotfiles,
            classify,
        );
        match (&self.access_log, &next.access_log) {
            (_, Some(_)) => applied.push("access_log (reopened)".to_string()),
            (Some(_), None) => applied.push("access_log (off)".to_string()),
            (None, None) => {}
        }
        // Containers keep their order (a connection names its container by index): the running ones first, a
        // removed one kept (the scheduler cannot remove a container), the added ones after them.
        let mut containers = Vec::with_capacity(self.containers.len() + file.containers.len());
        for running in &self.containers {
            match file.containers.iter().find(|new| new.name == running.name) {
                Some(new) => {
                    applied.extend(container_changes(running, new));
                    containers.push(new.clone());
                }
                None => {
                    kept.push(KeptSetting {
                        setting: format!("containers.{}", running.name),
                        running: "configured".to_string(),
                        file: "removed (a container cannot be removed from a running node)"
                            .to_string(),
                    });
                    containers.push(running.clone());
                }
            }
        }
        for new in &file.containers {
            if !self
                .containers
                .iter()
                .any(|running| running.name == new.name)
            {
                applied.push(format!("containers.{} (added)", new.name));
                containers.push(new.clone());
            }
        }
        next.containers = containers;
        next.validate()?;
        Ok(ReloadPlan {
            config: next,
            applied,
            kept,
        })
    }

    /// The index of the default container (where connections start when no network rule matches).
    pub fn default_container_index(&self) -> usize {
        // The defaults put "default" first and the file replaces it in place; a hand-built config may not.
        match self.containers.first() {
            Some(first) if first.name == DEFAULT_CONTAINER => 0,
            _ => self
                .containers
                .iter()
                .position(|container| container.name == DEFAULT_CONTAINER)
                .unwrap_or(0),
        }
    }
}

/// A setting a reload cannot change on a running node: it keeps `running`; the file says `file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptSetting {
    /// The setting's name, e.g. `listen` or `containers.api`.
    pub setting: String,
    pub running: String,
    pub file: String,
}

impl std::fmt::Display for KeptSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: kept {} (the file says {})",
            self.setting, self.running, self.file
        )
    }
}

/// What a reload does ([`ServeConfig::plan_reload`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ReloadPlan {
    /// The configuration in force after the reload: the file's, with the kept settings' running values.
    pub config: ServeConfig,
    /// The settings that change live, e.g. `keepalive_timeout_ms`, `containers.gold.shares`,
    /// `containers.api (added)`, `access_log (reopened)`.
    pub applied: Vec<String>,
    /// The settings kept at their running value.
    pub kept: Vec<KeptSetting>,
}

/// The names of `new`'s settings that differ from `running`'s (`containers.NAME.SETTING`).
fn container_changes(running: &ContainerConfig, new: &ContainerConfig) -> Vec<String> {
    let changed = [
        ("shares", running.shares != new.shares),
        ("tasks_max", running.tasks_max != new.tasks_max),
        (
            "cpu_percent_max",
            running.cpu_percent_max != new.cpu_percent_max,
        ),
        (
            "send_rate_bytes_per_second",
            running.send_rate_bytes_per_second != new.send_rate_bytes_per_second,
        ),
    ];
    changed
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(setting, _)| format!("containers.{}.{setting}", new.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = ServeConfig::from_toml_str("").unwrap();
        assert_eq!(config, ServeConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.root, PathBuf::from("."));
    }

    #[test]
    fn file_settings_override_defaults() {
        let config = ServeConfig::from_toml_str(
            r#"
            listen = "127.0.0.1:9000"
            cores = "2"
            policy = "hash"
            io_driver = "epoll"
            cache_mb = 64
            cache_read = "page-cache"
            keepalive_timeout_ms = 5000
            access_log = { path = "/tmp/access.log", format = "common" }
            [[containers]]
            name = "api"
            shares = 300
            tasks_max = 10
            [[classify]]
            container = "api"
            path_prefix = "/api/"
            network = "10.0.0.0/8"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.cores, ShardSelection::Count(2));
        let pinned = ServeConfig::from_toml_str("cpus = \"1\"").unwrap();
        assert_eq!(
            pinned.cores,
            ShardSelection::List(vec![larder_runtime::CpuId(1)])
        );
        assert_eq!(config.policy, PolicyKind::ConsistentHash);
        assert_eq!(config.io_driver, IoDriver::Epoll);
        assert_eq!(config.cache_mb, 64);
        assert_eq!(config.cache_read, ReadMode::PageCache);
        assert_eq!(
            config.access_log.as_ref().unwrap().format,
            LogFormat::Common
        );
        assert_eq!(config.containers.len(), 2);
        let ten: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "192.168.0.1".parse().unwrap();
        assert_eq!(config.classify_for_test(b"/api/x", ten), "api");
        assert_eq!(config.classify_for_test(b"/api/x", other), "default");
        assert_eq!(config.classify_for_test(b"/static", ten), "default");
    }

    impl ServeConfig {
        fn classify_for_test(&self, path: &[u8], client: IpAddr) -> &str {
            &self.containers[self.classify(Some(b"h:80"), path, client)].name
        }
    }

    #[test]
    fn errors_name_the_setting() {
        let cases = [
            ("keepalive_timeout_ms = 0", "keepalive_timeout_ms"),
            ("cache_mb = 0", "cache_mb"),
            ("policy = \"random\"", "policy"),
            ("io_driver = \"kqueue\"", "io_driver"),
            ("cache_read = \"mmap\"", "cache_read"),
            ("listen = \"nowhere\"", "listen"),
            ("cores = \"x\"", "cores"),
            ("cores = \"0\"", "cpus = \"0\""),
            ("cpus = \"0-x\"", "cpus"),
            ("cores = \"2\"\ncpus = \"0-1\"", "cores and cpus"),
            ("header_bytes_max = 1000000", "header_bytes_max"),
            ("[[classify]]\ncontainer = \"nope\"", "classify.container"),
            (
                "[[classify]]\ncontainer = \"default\"\nnetwork = \"10.0.0.0/40\"",
                "classify.network",
            ),
            ("unknown_setting = 1", "unknown_setting"),
            (
                "[[containers]]\nname = \"api\"\ncpu_percent_max = 101",
                "containers.cpu_percent_max = 101",
            ),
            (
                "[[containers]]\nname = \"default\"\nsend_rate_bytes_per_second = 10000000001",
                "containers.send_rate_bytes_per_second = 10000000001",
            ),
            (
                "[[containers]]\nname = \"api\"\ncpu_percent_max = -1",
                "cpu_percent_max",
            ),
            (
                "[[containers]]\nname = \"a\\u0000b\"",
                r#"containers.name = "a\0b""#,
            ),
            ("[[containers]]\nname = \"\"", "containers.name"),
            ("[[containers]]\nname = \"web/1\"", "containers.name"),
            (
                "[[containers]]\nname = \"api\"\nshares = 5000000",
                "containers.shares = 5000000",
            ),
            (
                "[[containers]]\nname = \"api\"\ntasks_max = 1048577",
                "containers.tasks_max = 1048577",
            ),
        ];
        for (text, setting) in cases {
            let message = ServeConfig::from_toml_str(text).unwrap_err().to_string();
            assert!(message.contains(setting), "{text:?} gave {message:?}");
        }
    }

    #[test]
    fn container_cpu_cap_and_send_rate_are_read_and_kept_in_range() {
        let config = ServeConfig::from_toml_str(
            r#"
            [[containers]]
            name = "api"
            cpu_percent_max = 100
            send_rate_bytes_per_second = 10000000000
            [[containers]]
            name = "batch"
            cpu_percent_max = 25
            send_rate_bytes_per_second = 1048576
            "#,
        )
        .unwrap();
        let limits: Vec<(&str, u32, u64)> = config
            .containers
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.cpu_percent_max,
                    c.send_rate_bytes_per_second,
                )
            })
            .collect();
        assert_eq!(
            limits,
            [
                ("default", 0, 0),
                ("api", 100, 10_000_000_000),
                ("batch", 25, 1_048_576)
            ],
            "absent keys: no cap, no send rate"
        );

        let mut config = ServeConfig::default();
        config.containers[0].cpu_percent_max = CPU_PERCENT_MAX_LIMIT + 1;
        assert_eq!(
            config.validate(),
            Err(invalid(
                "containers.cpu_percent_max",
                101,
                "must be at most 100 (percent of a shard; 0 = no cap)"
            ))
        );
        config.containers[0].cpu_percent_max = 0;
        config.containers[0].send_rate_bytes_per_second = u64::MAX;
        let error = config.validate().unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "containers.send_rate_bytes_per_second",
                    ..
                }
            ),
            "{error}"
        );
        config.containers[0].send_rate_bytes_per_second = SEND_RATE_BYTES_PER_SECOND_LIMIT;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn host_rules_ignore_port_and_case() {
        let mut config = ServeConfig::default();
        config.containers.push(ContainerConfig {
            name: "a".into(),
            shares: 1,
            tasks_max: 1,
            cpu_percent_max: 0,
            send_rate_bytes_per_second: 0,
        });
        config.classify.push(ClassifyRule {
            container: "a".into(),
            host: Some("Example.org".into()),
            path_prefix: None,
            network: None,
        });
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(config.classify(Some(b"example.ORG:8080"), b"/", local), 1);
        assert_eq!(config.classify(Some(b"other"), b"/", local), 0);
        assert_eq!(config.classify(None, b"/", local), 0);
    }

    #[test]
    fn networks() {
        let net: Network = "192.168.0.0/23".parse().unwrap();
        assert!(net.contains("192.168.1.7".parse().unwrap()));
        assert!(!net.contains("192.168.2.1".parse().unwrap()));
        assert!(net.contains("::ffff:192.168.0.1".parse().unwrap()));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn to_toml_reads_back_to_the_same_configuration() {
        let config = ServeConfig::from_toml_str(
            r#"
            listen = "127.0.0.1:9000"
            cpus = "0-1"
            policy = "hash"
            io_driver = "epoll"
            cache_read = "drop-cache"
            accept_shards = [0]
            access_log = { path = "/tmp/access.log", format = "common" }
            [[containers]]
            name = "gold"
            shares = 300
            cpu_percent_max = 50
            [[classify]]
            container = "gold"
            host = "gold.example"
            network = "10.0.0.0/8"
            "#,
        )
        .unwrap();
        let text = config.to_toml();
        assert_eq!(ServeConfig::from_toml_str(&text), Ok(config), "{text}");
        assert_eq!(
            ServeConfig::from_toml_str(&ServeConfig::default().to_toml()),
            Ok(ServeConfig::default())
        );
        for setting in [
            "listen",
            "keepalive_timeout_ms",
            "[[containers]]",
            "[[classify]]",
        ] {
            assert!(text.contains(setting), "{setting} missing from {text}");
        }
    }

    fn reload(running: &str, file: &str) -> ReloadPlan {
        let running = ServeConfig::from_toml_str(running).unwrap();
        let file = ServeConfig::from_toml_str(file).unwrap();
        running.plan_reload(&file).unwrap()
    }

    #[test]
    fn reload_applies_live_settings_and_keeps_the_others_at_their_running_value() {
        let plan = reload(
            r#"
            listen = "127.0.0.1:9000"
            cores = "2"
            keepalive_timeout_ms = 5000
            "#,
            r#"
            listen = "127.0.0.1:9001"
            cores = "2"
            io_driver = "epoll"
            cache_mb = 64
            keepalive_timeout_ms = 6000
            connections_max = 10
            policy = "wrr"
            "#,
        );
        assert_eq!(
            plan.applied,
            ["policy", "keepalive_timeout_ms", "connections_max"]
        );
        let kept: Vec<(&str, &str, &str)> = plan
            .kept
            .iter()
            .map(|kept| {
                (
                    kept.setting.as_str(),
                    kept.running.as_str(),
                    kept.file.as_str(),
                )
            })
            .collect();
        assert_eq!(
            kept,
            [
                ("listen", "127.0.0.1:9000", "127.0.0.1:9001"),
                ("io_driver", "auto", "epoll"),
                ("cache_mb", "256", "64"),
            ]
        );
        assert_eq!(plan.config.listen.port(), 9000, "listen kept");
        assert_eq!(plan.config.io_driver, IoDriver::Auto, "io_driver kept");
        assert_eq!(plan.config.cache_mb, 256, "cache_mb kept");
        assert_eq!(plan.config.keepalive_timeout_ms, 6000, "live: the file's");
        assert_eq!(plan.config.connections_max, 10);
        assert_eq!(plan.config.policy, PolicyKind::Wrr);
    }

    #[test]
    fn reload_of_the_same_file_changes_nothing() {
        let text = "keepalive_timeout_ms = 5000\n[[containers]]\nname = \"gold\"\nshares = 100";
        let plan = reload(text, text);
        assert_eq!(plan.applied, Vec::<String>::new());
        assert_eq!(plan.kept, Vec::new());
        assert_eq!(plan.config, ServeConfig::from_toml_str(text).unwrap());
    }

    #[test]
    fn reload_keeps_container_order_adds_at_the_end_and_keeps_removed_ones() {
        let plan = reload(
            r#"
            [[containers]]
            name = "gold"
            shares = 100
            [[containers]]
            name = "bronze"
            shares = 50
            [[classify]]
            container = "gold"
            path_prefix = "/gold/"
            "#,
            r#"
            [[containers]]
            name = "silver"
            shares = 200
            [[containers]]
            name = "gold"
            shares = 300
            tasks_max = 7
            [[classify]]
            container = "gold"
            path_prefix = "/g/"
            "#,
        );
        let names: Vec<&str> = plan
            .config
            .containers
            .iter()
            .map(|container| container.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["default", "gold", "bronze", "silver"],
            "running order first (indices stay valid), bronze kept, silver added"
        );
        assert_eq!(plan.config.containers[1].shares, 300);
        assert_eq!(plan.config.containers[2].shares, 50, "bronze as it ran");
        assert_eq!(
            plan.applied,
            [
                "classify",
                "containers.gold.shares",
                "containers.gold.tasks_max",
                "containers.silver (added)"
            ]
        );
        assert_eq!(plan.kept.len(), 1);
        assert_eq!(plan.kept[0].setting, "containers.bronze");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(plan.config.classify_for_test(b"/g/x", local), "gold");
        assert_eq!(plan.config.classify_for_test(b"/gold/x", local), "default");
    }

    #[test]
    fn reload_names_the_access_log_reopened_or_turned_off() {
        let on = "access_log = { path = \"/tmp/a.log\" }";
        assert_eq!(reload(on, on).applied, ["access_log (reopened)"]);
        assert_eq!(reload(on, "").applied, ["access_log (off)"]);
        assert_eq!(reload("", "").applied, Vec::<String>::new());
    }

    #[test]
    fn reload_that_would_exceed_the_container_limit_is_refused() {
        let many = |prefix: &str, count: usize| {
            (0..count)
                .map(|n| format!("[[containers]]\nname = \"{prefix}{n}\"\n"))
                .collect::<String>()
        };
        let running = ServeConfig::from_toml_str(&many("a", 40)).unwrap();
        let file = ServeConfig::from_toml_str(&many("b", 40)).unwrap();
        let error = running.plan_reload(&file).unwrap_err();
        assert!(error.to_string().starts_with("containers = 81"), "{error}");
    }
}
