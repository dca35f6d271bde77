//! The Larder control plane: a tonic gRPC server that aggregates per-shard load
//! from nodes and steers how they distribute requests, and the node-side agent
//! that talks to it.
//!
//! # What it owns
//! - [`state`]: the cluster state in domain types (node registry, latest load per
//!   shard, down detection, policy, weights, drain flags, containers, steering
//!   version). Pure: time is an argument.
//! - [`persist`]: the state file — the operator's run-time settings written
//!   atomically after every change and read back at start.
//! - [`convert`]: protobuf ↔ domain conversions; prost types stop here.
//! - [`auth`]: bearer token / loopback-only rules for mutations.
//! - [`reload`]: `ReloadNode`, relayed to one node over its `WatchReloads` stream and answered by its
//!   `ReloadDone`.
//! - [`server`]: [`ControlPlane::spawn`] runs `larder.v1.Control`,
//!   `larder.v1.NodeService`, server reflection v1 + v1alpha and
//!   `grpc.health.v1.Health` on its own thread and tokio runtime.
//! - [`client`]: a blocking `larder.v1.Control` client and protobuf-JSON
//!   rendering for `larder ctl`.
//! - [`agent`]: [`NodeAgent::spawn`] registers a node, streams its load and applies
//!   steering through [`NodeHooks`], on its own thread and tokio runtime.
//! - [`profile`]: [`ProfileDesk`], which carries `Control.ProfileNode` orders to a node over its agent
//!   session and its answer back; the node samples with `larder-profile`.
//! - [`assign`]: the cluster dispatcher of distributed mode (one lard policy over
//!   the nodes) behind `NodeService.Assign`; [`assign_client`]: [`AssignFeeder`],
//!   the node side that fetches assignments in batches.
//! - `background` (internal): the worker thread with a current-thread tokio
//!   runtime and a stop flag that [`agent`] and [`assign_client`] each run on.
//!
//! # Why this shape
//! The data plane runs one pinned thread per core with its own I/O runtime; tokio
//! must never run there. So both halves here own a thread with a current-thread
//! tokio runtime (one core at most) and meet the data plane only through
//! [`NodeHooks`], which the server implements with its bounded channels into shards.
//!
//! Limits are listed in [`state`] (tables), [`server`] (streams, intervals) and
//! [`agent`] (report queue, backoff).

pub mod agent;
pub mod assign;
pub mod assign_client;
pub mod auth;
mod background;
pub mod client;
pub mod convert;
pub mod persist;
pub mod profile;
pub mod reload;
pub mod server;
pub mod state;

/// The wire types, for users of [`client`] (the `larder` binary needs no other path to them).
pub use larder_proto as proto;

pub use agent::{
    AgentConfig, AgentError, AgentStats, AgentStatsReader, NodeAgent, NodeHooks, NodeLoad,
    ProfileJob, ReloadOutcome, ReloadRefused,
};
pub use assign::{Assignment, ASSIGN_TARGETS_MAX, ASSIGN_TTL_DEFAULT};
pub use assign_client::{
    AssignFeeder, AssignFeederConfig, AssignFeederError, AssignFeederHandle, AssignFeederStats,
};
pub use client::{CtlClient, CtlError};
pub use profile::{
    ProfileDesk, ProfileFailure, ProfileFailureKind, ProfileOrder, ProfileOutcome, ProfileRequest,
};
pub use server::{
    Clock, ControlConfig, ControlError, ControlHandle, ControlPlane, ControlStats,
    ControlStatsReader, ManualClock, SystemClock,
};
pub use state::{
    ClusterLoad, Container, ContainerLimits, ContainerLoad, ContainerName, NodeId, NodeInfo,
    NodeState, NodeSteering, NodeView, ShardId, ShardLoad, Steering, TargetLoad,
};
