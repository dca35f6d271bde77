//! The validated run configuration, and the parsers for the strings the command line hands over
//! (durations, `http://` URLs, `--class` specs).
//!
//! Owns: [`RunConfig`] (what one measurement does) and [`ClassConfig`] (one tagged workload in it).
//! Invariants after [`RunConfig::validate`]: at least one class; every class has at least one connection and a
//! pipeline depth in 1..=[`PIPELINE_MAX`]; open loop (`rate`) uses depth 1; a run ends by duration, by request
//! budget or by the end of a trace; class names are unique.
//! Limits: [`CONNECTIONS_MAX`] (100 000) connections per class, [`PIPELINE_MAX`] (256) requests in flight per
//! connection, [`CLASSES_MAX`] (64) classes.

use crate::cores::CoreList;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Most connections one class may open.
pub const CONNECTIONS_MAX: usize = 100_000;
/// Deepest pipeline (requests in flight on one connection).
pub const PIPELINE_MAX: usize = 256;
/// Most client classes in one run.
pub const CLASSES_MAX: usize = 64;

/// Errors in the command line or the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bad duration {0:?} (examples: 10s, 500ms, 2m, 1.5)")]
    Duration(String),
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("bad --class {spec:?}: {reason}")]
    Class { spec: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// Which monoio driver the generator threads use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring (fails if the kernel refuses it).
    Uring,
    /// epoll.
    Epoll,
}

/// What a class asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadSpec {
    /// These paths, chosen uniformly.
    Urls(Vec<String>),
    /// These paths in popularity order, chosen by a Zipf law with exponent `alpha`.
    Files { paths: Vec<String>, alpha: f64 },
    /// A trace: `order[i]` indexes `paths` and is due `offsets[i]` after the start (at its recorded pace);
    /// `speed: None` sends it in order as fast as possible, `Some(x)` at x times the recorded pace.
    Replay {
        paths: Vec<String>,
        order: Vec<u32>,
        offsets: Vec<Duration>,
        speed: Option<f64>,
    },
}

impl WorkloadSpec {
    pub fn paths(&self) -> &[String] {
        match self {
            WorkloadSpec::Urls(paths) => paths,
            WorkloadSpec::Files { paths, .. } => paths,
            WorkloadSpec::Replay { paths, .. } => paths,
        }
    }
}

/// One client class: a workload with its own connections, tag and report.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassConfig {
    pub name: String,
    pub workload: WorkloadSpec,
    pub connections: usize,
    pub pipeline: usize,
    /// Open loop: requests per second over all threads; `None` is closed loop.
    pub rate_per_sec: Option<f64>,
    /// Stop the class after this many requests (over all threads).
    pub requests_max: Option<u64>,
    pub seed: u64,
    /// Host header (the tag a server can classify by).
    pub host: String,
    /// Path prefix prepended to every path (the other tag).
    pub prefix: String,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub address: SocketAddr,
    pub cores: CoreList,
    pub driver: DriverChoice,
    pub classes: Vec<ClassConfig>,
    pub duration: Option<Duration>,
    pub warmup: Duration,
    /// Per response (and per connection attempt); zero disables the timeout.
    pub timeout: Duration,
    pub keepalive: bool,
    /// Extra header lines sent with every request.
    pub headers: Vec<String>,
}

impl RunConfig {
    /// Checks the invariants listed in the module docs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        if self.classes.is_empty() {
            return invalid("no class to run".into());
        }
        if self.classes.len() > CLASSES_MAX {
            return invalid(format!(
                "{} classes; at most {CLASSES_MAX}",
                self.classes.len()
            ));
        }
        for (i, class) in self.classes.iter().enumerate() {
            if self.classes[..i]
                .iter()
                .any(|other| other.name == class.name)
            {
                return invalid(format!("class name {:?} used twice", class.name));
            }
            if class.connections == 0 || class.connections > CONNECTIONS_MAX {
                return invalid(format!(
                    "class {}: connections must be 1..={CONNECTIONS_MAX}",
                    class.name
                ));
            }
            if class.pipeline == 0 || class.pipeline > PIPELINE_MAX {
                return invalid(format!(
                    "class {}: pipeline must be 1..={PIPELINE_MAX}",
                    class.name
                ));
            }
            if class.rate_per_sec.is_some() && class.pipeline > 1 {
                return invalid(format!(
                    "class {}: open loop (--rate) sends one request per connection at a time; \
                     raise --connections instead of --pipeline",
                    class.name
                ));
            }
            if class
                .rate_per_sec
                .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
            {
                return invalid(format!("class {}: rate must be positive", class.name));
            }
            if !self.keepalive && class.pipeline > 1 {
                return invalid(format!(
                    "class {}: --no-keepalive cannot pipeline",
                    class.name
                ));
            }
            let ends_by_itself = class.requests_max.is_some()
                || matches!(class.workload, WorkloadSpec::Replay { .. });
            if self.duration.is_none() && !ends_by_itself {
                return invalid(format!(
                    "class {}: give --duration, --requests or --replay",
                    class.name
                ));
            }
            if class.workload.paths().is_empty() {
                return invalid(format!("class {}: no URL, file list or trace", class.name));
            }
        }
        Ok(())
    }

    pub fn connections_total(&self) -> usize {
        self.classes.iter().map(|class| class.connections).sum()
    }
}

/// Parses `10s`, `500ms`, `2m`, `100us` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| ConfigError::Duration(text.into()))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(ConfigError::Duration(text.into())),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| ConfigError::Duration(text.into()))
}

/// An `http://host[:port]/path` URL split into what the generator needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host[:port]` as written: the default Host header.
    pub authority: String,
    pub address: SocketAddr,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses an `http://` URL and resolves its host (loopback names resolve without DNS).
pub fn parse_url(url: &str) -> Result<HttpUrl, ConfigError> {
    let bad = |reason: &str| ConfigError::Url {
        url: url.into(),
        reason: reason.into(),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let address = with_port
        .to_socket_addrs()
        .map_err(|e| bad(&e.to_string()))?
        .next()
        .ok_or_else(|| bad("host has no address"))?;
    Ok(HttpUrl {
        authority: authority.into(),
        address,
        path: path.into(),
    })
}

/// A parsed `--class` spec: `NAME:key=value:key=value…`. Unset fields inherit the command line's values.
///
/// Keys: `host=H` (Host header), `prefix=/P` (path prefix), `url=/PATH` (repeatable), `files=LIST`, `zipf=A`,
/// `replay=LOG`, `speed=X`, `connections=N`, `pipeline=D`, `rate=R`, `requests=N`, `seed=S`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassSpec {
    pub name: String,
    pub host: Option<String>,
    pub prefix: Option<String>,
    pub urls: Vec<String>,
    pub files: Option<String>,
    pub zipf: Option<f64>,
    pub replay: Option<String>,
    pub speed: Option<f64>,
    pub connections: Option<usize>,
    pub pipeline: Option<usize>,
    pub rate: Option<f64>,
    pub requests: Option<u64>,
    pub seed: Option<u64>,
}

impl ClassSpec {
    pub fn parse(spec: &str) -> Result<ClassSpec, ConfigError> {
        let bad = |reason: String| ConfigError::Class {
            spec: spec.into(),
            reason,
        };
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default().trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "the name (before the first ':') must be letters, digits, '_' or '-'".into(),
            ));
        }
        let mut class = ClassSpec {
            name: name.into(),
            ..ClassSpec::default()
        };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            let number = |what: &str| bad(format!("{key}={value:?} is not {what}"));
            match key {
                "host" => class.host = Some(value.into()),
                "prefix" => class.prefix = Some(value.into()),
                "url" => class.urls.push(value.into()),
                "files" => class.files = Some(value.into()),
                "replay" => class.replay = Some(value.into()),
                "zipf" => class.zipf = Some(value.parse().map_err(|_| number("a number"))?),
                "speed" => class.speed = Some(value.parse().map_err(|_| number("a number"))?),
                "rate" => class.rate = Some(value.parse().map_err(|_| number("a number"))?),
                "connections" => {
                    class.connections = Some(value.parse().map_err(|_| number("an integer"))?)
                }
                "pipeline" => {
                    class.pipeline = Some(value.parse().map_err(|_| number("an integer"))?)
                }
                "requests" => {
                    class.requests = Some(value.parse().map_err(|_| number("an integer"))?)
                }
                "seed" => class.seed = Some(value.parse().map_err(|_| number("an integer"))?),
                _ => return Err(bad(format!("unknown key {key:?}"))),
            }
        }
        let workloads = [
            !class.urls.is_empty(),
            class.files.is_some(),
            class.replay.is_some(),
        ];
        if workloads.iter().filter(|&&set| set).count() > 1 {
            return Err(bad("give at most one of url=, files=, replay=".into()));
        }
        Ok(class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn urls() {
        let url = parse_url("http://127.0.0.1:8080/a/b.html?x=1").unwrap();
        assert_eq!(url.authority, "127.0.0.1:8080");
        assert_eq!(url.address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(url.path, "/a/b.html?x=1");
        assert_eq!(parse_url("http://127.0.0.1").unwrap().path, "/");
        assert_eq!(parse_url("http://127.0.0.1").unwrap().address.port(), 80);
        assert!(parse_url("https://127.0.0.1/").is_err());
    }

    #[test]
    fn class_specs() {
        let class = ClassSpec::parse(
            "gold:host=gold.example:url=/a.html:url=/b.html:connections=8:rate=100",
        )
        .unwrap();
        assert_eq!(class.name, "gold");
        assert_eq!(class.host.as_deref(), Some("gold.example"));
        assert_eq!(class.urls, vec!["/a.html", "/b.html"]);
        assert_eq!(class.connections, Some(8));
        assert_eq!(class.rate, Some(100.0));
        for bad in [
            "",
            ":host=x",
            "a:host",
            "a:bogus=1",
            "a:connections=x",
            "a:url=/x:files=f",
        ] {
            assert!(ClassSpec::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
