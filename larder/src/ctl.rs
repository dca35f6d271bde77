//! `larder ctl`: the `larder.v1.Control` calls from the command line, one
//! subcommand per method, printed as tables or (`--json`) in the protobuf JSON
//! mapping grpcurl uses. A failed call prints its gRPC code and message and exits 1.

use std::process::ExitCode;

use larder_control::client::{to_json, Message};
use larder_control::proto::v1 as pb;
use larder_control::{CtlClient, CtlError};

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The control plane's gRPC address (`larder control --listen`, or `larder serve --control`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50051")]
    control: String,
    /// Bearer token for changes, when the control plane has one (`larder control --token`).
    #[arg(long)]
    token: Option<String>,
    /// Print the answer as protobuf JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    call: Call,
}

#[derive(Debug, clap::Subcommand)]
enum Call {
    /// Nodes, their state, weight and load.
    ListNodes,
    /// One node with the load of each shard.
    GetNode {
        /// The node's id: its HTTP address, as `list-nodes` shows it.
        node_id: String,
    },
    /// Cluster totals and per-node load.
    GetClusterLoad,
    /// Cluster load every interval.
    WatchClusterLoad {
        /// Milliseconds between two updates.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Number of updates (0 = until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// The policy, its parameters and the node weights.
    GetPolicy,
    /// Change the policy, its parameters and/or node weights (absent flags keep their value).
    SetPolicy {
        #[command(flatten)]
        policy: PolicyFlags,
        /// NODE=WEIGHT (1..=256); repeatable.
        #[arg(long = "weight", value_name = "NODE=WEIGHT")]
        weights: Vec<String>,
    },
    /// The hottest targets and the shards serving them.
    ListTargets {
        /// Most targets shown, the hottest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Stop sending new requests to a node.
    Drain {
        /// The node's id: its HTTP address, as `list-nodes` shows it.
        node_id: String,
    },
    /// Send requests to a drained node again.
    Undrain {
        /// The node's id: its HTTP address, as `list-nodes` shows it.
        node_id: String,
    },
    /// Make a node re-read its configuration file, as SIGHUP does; prints what it applied and kept.
    ReloadNode {
        /// The node's id: its HTTP address, as `list-nodes` shows it.
        node_id: String,
    },
    /// Containers with shares, limits and cluster CPU time.
    ListContainers,
    /// Sample the CPU stacks of one node's shard (or all shards) and write them to a file.
    Profile(crate::ctl_profile::ProfileFlags),
    /// Set a container's shares and limits (replaces all of them).
    SetContainer {
        #[command(flatten)]
        container: ContainerFlags,
        /// Create the container if it does not exist.
        #[arg(long)]
        create: bool,
    },
}

// The flags of `set-policy` that become a `larder.v1.Policy` (no doc comment: clap would take it as the
// subcommand's about text).
#[derive(Debug, clap::Args)]
struct PolicyFlags {
    /// Policy: wrr, lc (least connections), ch (consistent hashing), ch-bl (with bounded loads), lard, lard-r.
    #[arg(long)]
    kind: Option<String>,
    /// LARD: requests in flight below which a node counts as lightly loaded (paper: 25).
    #[arg(long)]
    t_low: Option<u32>,
    /// LARD: requests in flight above which a target moves to a lightly loaded node (paper: 65; at twice this,
    /// to the least-loaded one).
    #[arg(long)]
    t_high: Option<u32>,
    /// LARD/R: a target's server set unchanged for this many milliseconds drops a server (paper: 20000).
    #[arg(long)]
    k_ms: Option<u64>,
    /// ch-bl: no node above this factor times the average load (at least 1, e.g. 1.25).
    #[arg(long)]
    balance_factor: Option<f64>,
    /// ch, ch-bl: points of each node on the hash ring.
    #[arg(long)]
    vnodes_per_server: Option<u32>,
    /// LARD, LARD/R: most targets tracked.
    #[arg(long)]
    targets_max: Option<u64>,
    /// LARD, LARD/R: a target idle this many milliseconds is forgotten.
    #[arg(long)]
    target_idle_ms: Option<u64>,
}

impl PolicyFlags {
    /// The policy message; an absent kind is `Unspecified` and absent parameters stay unset (both keep their value).
    fn to_policy(&self) -> anyhow::Result<pb::Policy> {
        let kind = match &self.kind {
            Some(name) => policy_kind(name)?,
            None => pb::PolicyKind::Unspecified,
        };
        Ok(pb::Policy {
            kind: kind as i32,
            lard: Some(pb::LardParams {
                t_low: self.t_low,
                t_high: self.t_high,
                k_ms: self.k_ms,
            }),
            balance_factor: self.balance_factor,
            vnodes_per_server: self.vnodes_per_server,
            targets_max: self.targets_max,
            target_idle_ms: self.target_idle_ms,
        })
    }
}

// The arguments of `set-container` that become a `larder.v1.Container` (no doc comment, as above).
#[derive(Debug, clap::Args)]
struct ContainerFlags {
    /// The container's name (as in the nodes' `[[containers]]`).
    name: String,
    /// CPU shares, proportional to the other containers' (300 against 100 = 3/4 of a saturated core).
    #[arg(long)]
    shares: u32,
    /// Connections in service at once per shard; one more gets 503 + Retry-After (0..=1048576, 0 = the node's own).
    #[arg(long, default_value_t = 0)]
    connections_max: u64,
    /// Requests queued per shard (0..=1048576, 0 = the node's own).
    #[arg(long, default_value_t = 0)]
    queued_work_max: u64,
    /// Percent of each shard's CPU the container may use, busy or idle (0..=100, 0 = the node's own).
    #[arg(long, default_value_t = 0)]
    cpu_percent_max: u32,
    /// Send rate of each of its connections, bytes per second (0..=10000000000, 0 = the node's own).
    #[arg(long, default_value_t = 0)]
    send_rate_bytes_per_second: u64,
}

impl ContainerFlags {
    fn to_container(&self) -> pb::Container {
        pb::Container {
            name: self.name.clone(),
            shares: self.shares,
            limits: Some(pb::ContainerLimits {
                connections_max: self.connections_max,
                queued_work_max: self.queued_work_max,
                cpu_percent_max: self.cpu_percent_max,
                send_rate_bytes_per_second: self.send_rate_bytes_per_second,
            }),
        }
    }
}

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    match call(args) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("larder ctl: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn policy_kind(name: &str) -> anyhow::Result<pb::PolicyKind> {
    Ok(match name {
        "wrr" => pb::PolicyKind::Wrr,
        "lc" => pb::PolicyKind::LeastConnections,
        "ch" => pb::PolicyKind::ConsistentHash,
        "ch-bl" => pb::PolicyKind::ConsistentHashBoundedLoad,
        "lard" => pb::PolicyKind::Lard,
        "lard-r" => pb::PolicyKind::LardR,
        other => anyhow::bail!("unknown policy {other:?}; valid: wrr, lc, ch, ch-bl, lard, lard-r"),
    })
}

fn policy_name(kind: i32) -> &'static str {
    match pb::PolicyKind::try_from(kind) {
        Ok(pb::PolicyKind::Wrr) => "wrr",
        Ok(pb::PolicyKind::LeastConnections) => "lc",
        Ok(pb::PolicyKind::ConsistentHash) => "ch",
        Ok(pb::PolicyKind::ConsistentHashBoundedLoad) => "ch-bl",
        Ok(pb::PolicyKind::Lard) => "lard",
        Ok(pb::PolicyKind::LardR) => "lard-r",
        Ok(pb::PolicyKind::Unspecified) | Err(_) => "?",
    }
}

fn parse_weight(text: &str) -> anyhow::Result<pb::NodeWeight> {
    let (node_id, weight) = text
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--weight {text:?}: expected NODE=WEIGHT"))?;
    Ok(pb::NodeWeight {
        node_id: node_id.to_string(),
        weight: weight
            .parse()
            .map_err(|error| anyhow::anyhow!("--weight {text:?}: {error}"))?,
    })
}

/// Either a call error (printed with its gRPC code) or a usage error.
#[derive(Debug)]
enum Failure {
    Call(CtlError),
    Usage(anyhow::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Call(error) => write!(f, "{error}"),
            Failure::Usage(error) => write!(f, "{error:#}"),
        }
    }
}

impl From<CtlError> for Failure {
    fn from(error: CtlError) -> Failure {
        Failure::Call(error)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::Usage(error)
    }
}

/// Prints `message` as JSON or with `table`.
fn show<M: Message>(
    json: bool,
    message_name: &str,
    message: &M,
    table: impl FnOnce(&M),
) -> Result<(), Failure> {
    if json {
        let value = to_json(message_name, message)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(anyhow::Error::from)?
        );
    } else {
        table(message);
    }
    Ok(())
}

fn call(args: CtlArgs) -> Result<(), Failure> {
    let mut client = CtlClient::connect(&args.control, args.token.as_deref())?;
    let json = args.json;
    match args.call {
        Call::ListNodes => {
            let answer = client.list_nodes()?;
            show(json, "larder.v1.ListNodesResponse", &answer, |answer| {
                print_nodes(&answer.nodes)
            })
        }
        Call::GetNode { node_id } => {
            let answer = client.get_node(&node_id)?;
            show(json, "larder.v1.GetNodeResponse", &answer, |answer| {
                print_nodes(answer.node.as_slice());
                println!();
                print_shards(&answer.shards);
            })
        }
        Call::GetClusterLoad => {
            let answer = client.get_cluster_load()?;
            show(json, "larder.v1.ClusterLoad", &answer, print_cluster_load)
        }
        Call::WatchClusterLoad { interval_ms, count } => {
            let mut failure = None;
            client.watch_cluster_load(interval_ms, count, |load| {
                if failure.is_none() {
                    if let Err(error) = show(json, "larder.v1.ClusterLoad", &load, |load| {
                        print_cluster_load(load);
                        println!();
                    }) {
                        failure = Some(error);
                    }
                }
            })?;
            failure.map_or(Ok(()), Err)
        }
        Call::GetPolicy => {
            let answer = client.get_policy()?;
            show(json, "larder.v1.GetPolicyResponse", &answer, print_policy)
        }
        Call::SetPolicy { policy, weights } => {
            let request = pb::SetPolicyRequest {
                policy: Some(policy.to_policy()?),
                node_weights: weights
                    .iter()
                    .map(|text| parse_weight(text))
                    .collect::<anyhow::Result<_>>()?,
            };
            let answer = client.set_policy(request)?;
            show(json, "larder.v1.SetPolicyResponse", &answer, |answer| {
                println!("steering version {}", answer.steering_version)
            })
        }
        Call::ListTargets { limit } => {
            let answer = client.list_targets(limit)?;
            show(
                json,
                "larder.v1.ListTargetsResponse",
                &answer,
                print_targets,
            )
        }
        Call::Drain { node_id } => set_drained(&mut client, json, &node_id, true),
        Call::Undrain { node_id } => set_drained(&mut client, json, &node_id, false),
        Call::ReloadNode { node_id } => {
            let answer = client.reload_node(&node_id)?;
            show(json, "larder.v1.ReloadNodeResponse", &answer, |answer| {
                if answer.applied.is_empty() {
                    println!("{node_id} reloaded: nothing changed");
                } else {
                    println!("{node_id} reloaded: applied {}", answer.applied.join(", "));
                }
                for kept in &answer.kept {
                    println!("  not live, {kept}");
                }
            })
        }
        Call::ListContainers => {
            let answer = client.list_containers()?;
            show(
                json,
                "larder.v1.ListContainersResponse",
                &answer,
                print_containers,
            )
        }
        Call::Profile(flags) => {
            use crate::ctl_profile::{render, write_whole};
            let request = flags.to_request()?;
            let answer = client.profile_node(request)?;
            let profile = answer.profile.unwrap_or_default();
            let shard = flags
                .shard
                .map_or("every shard".to_string(), |shard| format!("shard {shard}"));
            let title = format!(
                "larder: node {}, {shard}, {} s at {} Hz",
                flags.node_id, flags.seconds, profile.frequency_hz
            );
            write_whole(&flags.out, &render(&profile, flags.format(), &title)?)?;
            show(json, "larder.v1.ProfileData", &profile, |profile| {
                println!(
                    "wrote {} stacks ({} samples, {} lost) of node {}, {shard}, to {}",
                    profile.stacks.len(),
                    profile.samples,
                    profile.samples_lost,
                    flags.node_id,
                    flags.out.display()
                )
            })
        }
        Call::SetContainer { container, create } => {
            let answer = client.set_container(pb::SetContainerRequest {
                container: Some(container.to_container()),
                create,
            })?;
            show(json, "larder.v1.SetContainerResponse", &answer, |answer| {
                println!(
                    "container {} set; steering version {}",
                    container.name, answer.steering_version
                )
            })
        }
    }
}

/// `drain` (`drained`) or `undrain` (not `drained`) a node and show the answer.
fn set_drained(
    client: &mut CtlClient,
    json: bool,
    node_id: &str,
    drained: bool,
) -> Result<(), Failure> {
    let (answer, done) = if drained {
        (client.drain(node_id)?, "drained")
    } else {
        (client.undrain(node_id)?, "undrained")
    };
    show(json, "larder.v1.DrainResponse", &answer, |answer| {
        println!(
            "{node_id} {done}; steering version {}",
            answer.steering_version
        )
    })
}

fn state_name(state: i32) -> &'static str {
    match pb::NodeState::try_from(state) {
        Ok(pb::NodeState::Up) => "up",
        Ok(pb::NodeState::Down) => "down",
        Ok(pb::NodeState::Unspecified) | Err(_) => "?",
    }
}

fn print_nodes(nodes: &[pb::NodeSummary]) {
    println!(
        "{:<16} {:<22} {:>5} {:<5} {:>7} {:>6} {:>8} {:>8} {:>10} {:>9}",
        "NODE",
        "HTTP",
        "CORES",
        "STATE",
        "DRAINED",
        "WEIGHT",
        "AGE_MS",
        "CONNS",
        "REQ/S",
        "REPORTS"
    );
    for node in nodes {
        let info = node.info.clone().unwrap_or_default();
        let total = node.total.clone().unwrap_or_default();
        println!(
            "{:<16} {:<22} {:>5} {:<5} {:>7} {:>6} {:>8} {:>8} {:>10.0} {:>9}",
            info.node_id,
            info.http_address,
            info.cores,
            state_name(node.state),
            if node.drained { "yes" } else { "no" },
            node.weight,
            node.last_report_age_ms,
            total.active_connections,
            total.requests_per_second,
            node.reports_received
        );
    }
}

fn print_shards(shards: &[pb::ShardLoad]) {
    println!(
        "{:>5} {:>7} {:>7} {:>10} {:>12} {:>12} {:>10} {:>10} {:>9} {:>9} {:>12}",
        "SHARD",
        "CONNS",
        "QUEUED",
        "REQ/S",
        "BYTES/S",
        "CACHE_B",
        "HITS",
        "MISSES",
        "EVICT",
        "HANDOFF",
        "CPU_US"
    );
    for shard in shards {
        println!(
            "{:>5} {:>7} {:>7} {:>10.0} {:>12.0} {:>12} {:>10} {:>10} {:>9} {:>9} {:>12}",
            shard.shard,
            shard.active_connections,
            shard.queued_work,
            shard.requests_per_second,
            shard.bytes_per_second,
            shard.cache_bytes,
            shard.cache_hits,
            shard.cache_misses,
            shard.cache_evictions,
            shard.handoffs,
            shard.cpu_time_us
        );
        for container in &shard.containers {
            println!(
                "      container {:<16} shares {:>5} cpu_us {:>12} poll_cpu_us {:>12} rejections {:>8} throttles {:>8}",
                container.container,
                container.shares,
                container.cpu_time_us,
                container.poll_cpu_time_us,
                container.rejections,
                container.throttles
            );
        }
    }
}

fn print_cluster_load(load: &pb::ClusterLoad) {
    let total = load.total.clone().unwrap_or_default();
    println!(
        "nodes up {}  down {}  shards {}  connections {}  req/s {:.0}  bytes/s {:.0}  cache hits {}  misses {}  reports {}",
        load.nodes_up,
        load.nodes_down,
        total.shard,
        total.active_connections,
        total.requests_per_second,
        total.bytes_per_second,
        total.cache_hits,
        total.cache_misses,
        load.reports_received
    );
    print_nodes(&load.nodes);
}

fn print_policy(answer: &pb::GetPolicyResponse) {
    let policy = answer.policy.unwrap_or_default();
    let lard = policy.lard.unwrap_or_default();
    println!("policy             {}", policy_name(policy.kind));
    println!("t_low              {}", lard.t_low.unwrap_or_default());
    println!("t_high             {}", lard.t_high.unwrap_or_default());
    println!("k_ms               {}", lard.k_ms.unwrap_or_default());
    println!(
        "balance_factor     {}",
        policy.balance_factor.unwrap_or_default()
    );
    println!(
        "vnodes_per_server  {}",
        policy.vnodes_per_server.unwrap_or_default()
    );
    println!(
        "targets_max        {}",
        policy.targets_max.unwrap_or_default()
    );
    println!(
        "target_idle_ms     {}",
        policy.target_idle_ms.unwrap_or_default()
    );
    println!("steering_version   {}", answer.steering_version);
    for weight in &answer.node_weights {
        println!("weight             {} = {}", weight.node_id, weight.weight);
    }
}

fn print_targets(answer: &pb::ListTargetsResponse) {
    println!("{:<40} {:>10}  SERVERS", "TARGET", "REQ/S");
    for target in &answer.targets {
        let servers: Vec<String> = target
            .servers
            .iter()
            .map(|server| format!("{}/{}", server.node_id, server.shard))
            .collect();
        println!(
            "{:<40} {:>10.0}  {}",
            target.target,
            target.requests_per_second,
            servers.join(" ")
        );
    }
}

fn print_containers(answer: &pb::ListContainersResponse) {
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>8} {:>12} {:>14} {:>10} {:>10}",
        "CONTAINER",
        "SHARES",
        "CONNS_MAX",
        "QUEUE_MAX",
        "CPU_%MAX",
        "SEND_B/S",
        "CPU_US",
        "REJECTED",
        "THROTTLED"
    );
    for status in &answer.containers {
        let container = status.container.clone().unwrap_or_default();
        let limits = container.limits.unwrap_or_default();
        println!(
            "{:<16} {:>6} {:>10} {:>10} {:>8} {:>12} {:>14} {:>10} {:>10}",
            container.name,
            container.shares,
            limits.connections_max,
            limits.queued_work_max,
            limits.cpu_percent_max,
            limits.send_rate_bytes_per_second,
            status.cpu_time_us,
            status.rejections,
            status.throttles
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn set_container(flags: &[&str]) -> pb::Container {
        let cli =
            Cli::try_parse_from(["ctl", "set-container"].iter().chain(flags)).expect("valid flags");
        match cli.ctl.call {
            Call::SetContainer { container, .. } => container.to_container(),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn set_container_flags_become_the_container_message() {
        let container = set_container(&[
            "web",
            "--shares",
            "2",
            "--cpu-percent-max",
            "25",
            "--send-rate-bytes-per-second",
            "1048576",
        ]);
        assert_eq!(
            container,
            pb::Container {
                name: "web".to_string(),
                shares: 2,
                limits: Some(pb::ContainerLimits {
                    connections_max: 0,
                    queued_work_max: 0,
                    cpu_percent_max: 25,
                    send_rate_bytes_per_second: 1_048_576,
                }),
            }
        );
        let bare = set_container(&["web", "--shares", "1"]);
        assert_eq!(
            bare.limits,
            Some(pb::ContainerLimits::default()),
            "absent flags: 0, none set"
        );
    }
}
