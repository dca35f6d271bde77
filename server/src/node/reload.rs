//! Reloading a running node's configuration (SIGHUP, `larder ctl reload-node`) without dropping a connection or
//! an in-flight response. In the server's own types: the caller reads and parses the file.
//!
//! # What it owns
//! [`NodeSteer::reload`] (the node side) and [`apply_on_shard`] (what each shard does with a
//! [`ShardSteer::Reload`]). Which settings are live and which are kept is [`ServeConfig::plan_reload`]'s
//! decision (`crate::config`, "Reload").
//!
//! # Protocol
//! 1. Validate the file's configuration and plan the reload against the configuration in force, under the
//!    node's configuration lock (reloads run one at a time). A bad value returns the error naming the setting;
//!    nothing has changed.
//! 2. Check what can still fail before anything is sent: every shard's access-log file opens for appending,
//!    and a changed policy builds.
//! 3. Send one [`ShardSteer::Reload`] with the planned configuration (`Arc`, shared) to every shard's control
//!    queue (at most [`super::DELIVERY_TIMEOUT`], 100 ms, per shard). It is sent even when nothing changed, so
//!    a reload repeated after a failed delivery brings every shard to the same configuration.
//! 4. Each shard, at its next poll of the queue ([`apply_on_shard`]): adds the containers it does not have;
//!    gives each container whose file settings changed its new shares and limits; reopens its access log
//!    (`<path>.<shard>`; the old one is flushed and closed, so a rotated file is let go); then replaces its
//!    [`super::shard::Live`] settings whole.
//! 5. Record the configuration in force; swap the policy if the file changed it ([`NodeSteer::set_policy`]).
//!
//! A request reads the shard's settings once, when its head is complete, and is answered under them: a reload
//! changes the next request, never one in flight. Connections stay open; one in a container keeps it
//! (containers keep their index, `crate::config`). What the file does not change is left as it is, including
//! a container's shares or a policy the control plane set since.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | reloads at once | 1 (the configuration lock) | two interleaved reloads could leave shards on different files |
//! | delivery | 100 ms per shard ([`super::DELIVERY_TIMEOUT`]) | a shard whose queue stays full is stuck; the caller hears which |
//! | access-log reopen | on the shard's thread; closing the old log waits for its writer's queue (8 × 64 KiB) | once per reload |

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use larder_lard::PolicyConfig;

use super::access_log::AccessLog;
use super::shard::{container_spec, Live, Shard};
use super::steer::{apply_limits, ApplyError, SchedulerLimits};
use super::{NodeSteer, ShardSteer, SteerError};
use crate::config::{ConfigError, ContainerConfig, KeptSetting};
use crate::ServeConfig;

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that changed live (`ReloadPlan::applied`); empty when the file changed nothing.
    pub applied: Vec<String>,
    /// Settings that cannot change on a running node, kept at their running value.
    pub kept: Vec<KeptSetting>,
}

/// Why a reload changed nothing (or, for [`SteerError::Delivery`], did not reach every shard).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("access_log.path = {path}: {source}")]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Steer(#[from] SteerError),
}

impl NodeSteer {
    /// Puts `file` (the re-read file with the flags applied) in force (module docs, steps 1-5).
    pub fn reload(&self, file: &ServeConfig) -> Result<ReloadReport, ReloadError> {
        file.validate()?;
        let shared = self.shared();
        let mut running = shared.running_config();
        let plan = running.plan_reload(file)?;
        if let Some(log) = &plan.config.access_log {
            for shard in 0..shared.shards {
                AccessLog::check_writable(&log.path, shard).map_err(|source| {
                    ReloadError::AccessLog {
                        path: log.path.clone(),
                        source,
                    }
                })?;
            }
        }
        let policy =
            (plan.config.policy != running.policy).then(|| PolicyConfig::new(plan.config.policy));
        if let Some(policy) = &policy {
            larder_lard::build(policy).map_err(|error| SteerError::Policy(error.to_string()))?;
        }
        let config = Arc::new(plan.config);
        self.deliver(&ShardSteer::Reload(Arc::clone(&config)))?;
        *running = config;
        drop(running);
        if let Some(policy) = policy {
            self.set_policy(policy)?;
        }
        Ok(ReloadReport {
            applied: plan.applied,
            kept: plan.kept,
        })
    }
}

/// Step 4 on the shard that received the reload (called from its message loop).
pub(crate) fn apply_on_shard(shard: &Rc<Shard>, config: Arc<ServeConfig>) {
    let before = shard.live();
    let containers = match apply_containers(shard, &before.config, &config) {
        Ok(containers) => containers,
        Err(error) => {
            // Not reached with a validated plan (its containers fit the scheduler's ranges and count).
            tracing::error!(shard = shard.index, %error, "reload: containers not changed; keeping the previous settings");
            return;
        }
    };
    reopen_access_log(shard, &config);
    *shard.live.borrow_mut() = Rc::new(Live::new(config, containers));
    tracing::debug!(shard = shard.index, "reload applied");
}

/// The shard's container of each of `config.containers`: the ones it has, with new shares and limits where the
/// file changed them, and the ones it adds.
fn apply_containers(
    shard: &Shard,
    before: &ServeConfig,
    config: &ServeConfig,
) -> Result<Vec<larder_runtime::container::ContainerId>, ApplyError> {
    let scheduler = shard.context.containers();
    let mut ids = Vec::with_capacity(config.containers.len());
    for container in &config.containers {
        let id = match scheduler.lookup(&container.name) {
            None => scheduler.add_container(container_spec(container))?,
            Some(id) => {
                let previous = before
                    .containers
                    .iter()
                    .find(|previous| previous.name == container.name);
                if previous != Some(container) {
                    scheduler.set_shares(id, container.shares)?;
                    apply_limits(scheduler, id, &container.name, &limits_of(container))?;
                }
                id
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// The scheduler limits a configured container is built with.
fn limits_of(container: &ContainerConfig) -> SchedulerLimits {
    SchedulerLimits {
        tasks_max: container.tasks_max,
        queued_max: container.tasks_max,
        cpu_percent_max: container.cpu_percent_max,
        send_rate_bytes_per_second: container.send_rate_bytes_per_second,
    }
}

/// Opens the configured access log afresh (or closes it when the file turned it off); a failure keeps the
/// log that was open.
fn reopen_access_log(shard: &Shard, config: &ServeConfig) {
    let reopened = match &config.access_log {
        None => None,
        Some(log) => match AccessLog::open(&log.path, shard.index as usize, log.format) {
            Ok(opened) => Some(opened),
            Err(error) => {
                tracing::error!(shard = shard.index, path = %log.path.display(), %error, "reload: access log not reopened; keeping the open one");
                return;
            }
        },
    };
    shard.flush_log();
    // The old log (if any) is dropped here: its last buffer goes to its writer, which finishes and closes.
    *shard.log.borrow_mut() = reopened;
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use larder_lard::PolicyKind;

    use super::*;
    use crate::node::steer::tests::{start_with, stop, wait_until};

    /// One GET on a fresh connection; the status line.
    fn status_of(node: &crate::Node, path: &str) -> String {
        let mut stream = TcpStream::connect(node.local_addr()).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer.lines().next().unwrap_or("").to_string()
    }

    fn with_gold(config: &mut ServeConfig) {
        *config = ServeConfig {
            containers: ServeConfig::from_toml_str("[[containers]]\nname = \"gold\"\nshares = 100")
                .expect("valid")
                .containers,
            ..config.clone()
        };
    }

    #[test]
    fn reload_changes_shares_adds_a_container_and_keeps_what_is_not_live() {
        let (node, root) = start_with(2, PolicyKind::Wrr, with_gold);
        std::fs::write(root.path().join("a.txt"), "a").expect("write");
        let steer = node.steer();
        let mut file = steer.shared().config().as_ref().clone();
        file.containers[1].shares = 300;
        file.containers.push(ContainerConfig {
            name: "silver".to_string(),
            shares: 50,
            tasks_max: 10,
            cpu_percent_max: 0,
            send_rate_bytes_per_second: 0,
        });
        file.cache_mb = 1;
        file.uri_bytes_max = 16;
        let report = steer.reload(&file).expect("valid reload");
        assert_eq!(
            report.applied,
            [
                "uri_bytes_max",
                "containers.gold.shares",
                "containers.silver (added)"
            ]
        );
        let kept: Vec<&str> = report
            .kept
            .iter()
            .map(|kept| kept.setting.as_str())
            .collect();
        assert_eq!(kept, ["cache_mb"]);
        wait_until(
            || {
                node.container_shares("gold") == [300, 300]
                    && node.container_shares("silver") == [50, 50]
            },
            || {
                format!(
                    "gold {:?}, silver {:?}",
                    node.container_shares("gold"),
                    node.container_shares("silver")
                )
            },
        );
        assert_eq!(steer.shared().config().cache_mb, 256, "cache_mb kept");
        assert_eq!(status_of(&node, "/a.txt"), "HTTP/1.1 200 OK");
        assert_eq!(
            status_of(&node, "/a-path-longer-than-sixteen-bytes.txt"),
            "HTTP/1.1 414 URI Too Long",
            "the new uri_bytes_max is in force"
        );
        stop(node);
    }

    #[test]
    fn a_reload_that_fails_a_check_changes_nothing() {
        let (node, root) = start_with(2, PolicyKind::Wrr, with_gold);
        let steer = node.steer();
        let before = steer.shared().config();
        let mut file = before.as_ref().clone();
        file.containers[1].shares = 300;
        file.access_log = Some(crate::config::AccessLogConfig {
            path: root.path().join("no-such-directory").join("access.log"),
            format: crate::config::LogFormat::Combined,
        });
        let error = steer.reload(&file).expect_err("the log cannot be opened");
        assert!(
            error.to_string().starts_with("access_log.path = "),
            "{error}"
        );

        let mut invalid = before.as_ref().clone();
        invalid.containers[1].shares = 0;
        let error = steer.reload(&invalid).expect_err("shares 0");
        assert!(error.to_string().contains("containers.shares"), "{error}");

        // A reload that does go through travels the same FIFO queues: once it is in force, anything a refused
        // one had sent would be too.
        let mut good = before.as_ref().clone();
        good.keepalive_timeout_ms += 1;
        steer.reload(&good).expect("valid");
        wait_until(
            || node.container_shares("gold") == [100, 100],
            || format!("gold {:?}", node.container_shares("gold")),
        );
        assert_eq!(steer.shared().config().containers, before.containers);
        stop(node);
    }

    #[test]
    fn a_container_index_from_a_shard_ahead_of_this_one_falls_back_to_the_default_container() {
        let scheduler = larder_runtime::container::ContainerScheduler::new(
            larder_runtime::container::SchedulerConfig::default(),
            larder_runtime::container::MonotonicClock::new(),
        )
        .expect("scheduler");
        let mut config = ServeConfig::default();
        with_gold(&mut config);
        let ids: Vec<_> = config
            .containers
            .iter()
            .map(|container| {
                scheduler
                    .add_container(container_spec(container))
                    .expect("added")
            })
            .collect();
        let live = Live::new(Arc::new(config), ids.clone());
        assert_eq!(live.container_id(1), ids[1], "gold");
        assert_eq!(
            live.container_id(2),
            ids[0],
            "a container another shard's reload added: default until classified here"
        );
    }

    #[test]
    fn reload_reopens_the_access_log_so_a_rotated_file_is_let_go() {
        let logs = tempfile::tempdir().expect("tempdir");
        let path = logs.path().join("access.log");
        let (node, root) = start_with(1, PolicyKind::Wrr, |config| {
            config.access_log = Some(crate::config::AccessLogConfig {
                path: path.clone(),
                format: crate::config::LogFormat::Common,
            });
        });
        std::fs::write(root.path().join("a.txt"), "a").expect("write");
        std::fs::write(root.path().join("b.txt"), "b").expect("write");
        let shard_file = logs.path().join("access.log.0");
        let rotated = logs.path().join("access.log.0.1");
        let read = |file: &std::path::Path| std::fs::read_to_string(file).unwrap_or_default();

        assert_eq!(status_of(&node, "/a.txt"), "HTTP/1.1 200 OK");
        wait_until(
            || read(&shard_file).contains("GET /a.txt"),
            || format!("log: {:?}", read(&shard_file)),
        );
        std::fs::rename(&shard_file, &rotated).expect("rotate");
        let steer = node.steer();
        let file = steer.shared().config().as_ref().clone();
        let report = steer.reload(&file).expect("the same file");
        assert_eq!(report.applied, ["access_log (reopened)"]);
        // The shard applies the reopen between two polls: once a request lands in the new file, it has.
        wait_until(
            || {
                status_of(&node, "/b.txt") == "HTTP/1.1 200 OK"
                    && read(&shard_file).contains("GET /b.txt")
            },
            || format!("new log: {:?}", read(&shard_file)),
        );
        assert_eq!(status_of(&node, "/c.txt"), "HTTP/1.1 404 Not Found");
        wait_until(
            || read(&shard_file).contains("GET /c.txt"),
            || format!("new log: {:?}", read(&shard_file)),
        );
        assert!(!read(&shard_file).contains("GET /a.txt"), "a fresh file");
        assert!(
            !read(&rotated).contains("GET /c.txt"),
            "nothing more goes to the rotated file"
        );
        let open_on_rotated = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| *target == rotated)
            .count();
        assert_eq!(open_on_rotated, 0, "the rotated file is closed");
        stop(node);
    }

    #[test]
    fn reload_swaps_a_changed_policy() {
        let (node, _root) = start_with(2, PolicyKind::Wrr, |_| {});
        let steer = node.steer();
        let mut file = steer.shared().config().as_ref().clone();
        file.policy = PolicyKind::ConsistentHash;
        assert_eq!(steer.reload(&file).expect("valid").applied, ["policy"]);
        assert_eq!(steer.policy_name(), "ch");
        stop(node);
    }
}
