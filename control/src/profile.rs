//! Profiles through the control plane: `Control.ProfileNode` asks a node, over its agent session, to sample
//! its shard threads, and waits for the node's answer. The sampling itself is `larder-profile`'s, on the node.
//!
//! # Why through the agent session
//! Nodes open connections to the control plane, never the reverse (a node behind NAT, or in a Kubernetes pod
//! without a Service, is still reachable), and they serve no gRPC themselves. So a profile order travels the
//! way steering does: down a server stream the agent keeps open (`NodeService.WatchProfileOrders`), and the
//! answer comes back as a call of the node (`NodeService.SubmitProfile`).
//!
//! # One profile
//! 1. The operator calls `ProfileNode(node_id, shard?, seconds)`. Refused before anything is sent: seconds
//!    outside 1..=60 or a shard ≥ the node's cores (INVALID_ARGUMENT naming the field), an unknown node
//!    (NOT_FOUND), a node that is down or has no order stream open (UNAVAILABLE), a node with a profile
//!    outstanding (RESOURCE_EXHAUSTED).
//! 2. The [`ProfileDesk`] gives the order an id, records it as the node's one outstanding order and puts it on
//!    the node's stream.
//! 3. The node samples for `seconds` and answers with `SubmitProfile(order_id, profile | failure)`; the desk
//!    hands the answer to the waiting call, which returns it (a failure becomes its status, see
//!    [`ProfileFailure::status`]).
//! 4. The call waits at most `seconds` + [`PROFILE_ANSWER_GRACE`]; then DEADLINE_EXCEEDED. Whatever ends the
//!    call (answer, deadline, the operator going away, shutdown) removes the outstanding order, so the node is
//!    free for the next profile and a late answer is refused with NOT_FOUND and dropped.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | outstanding orders | 1 per node | a profile is the node's CPU; a second would also skew the first |
//! | order stream buffer | 1 per node | at most one order is outstanding |
//! | [`PROFILE_ANSWER_GRACE`] | 10 s past `seconds` | symbolising a large debug binary takes seconds the first time |
//! | answer size | 3 MiB of stack text (`larder-profile`'s cap) | under tonic's 4 MiB message limit |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub use larder_profile::{FoldedStack, Profile};

use crate::state::{NodeId, ShardId};

/// How long past the profile's own duration the operator's call waits for the node's answer.
pub const PROFILE_ANSWER_GRACE: Duration = Duration::from_secs(10);

/// What a node is asked to sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileRequest {
    /// `None`: every shard.
    pub shard: Option<ShardId>,
    /// 1..=60 (`larder_profile::SECONDS_MAX`).
    pub seconds: u32,
}

/// An order as it travels to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileOrder {
    pub order_id: u64,
    pub request: ProfileRequest,
}

/// Why a node took no profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileFailureKind {
    PermissionDenied,
    Unsupported,
    Busy,
    InvalidArgument,
    Internal,
}

/// A node's refusal, with its reason in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProfileFailure {
    pub kind: ProfileFailureKind,
    pub message: String,
}

impl ProfileFailure {
    pub fn new(kind: ProfileFailureKind, message: impl Into<String>) -> ProfileFailure {
        ProfileFailure {
            kind,
            message: message.into(),
        }
    }

    /// The gRPC status the operator gets.
    pub fn status(&self) -> Status {
        let message = format!("the node took no profile: {}", self.message);
        match self.kind {
            ProfileFailureKind::PermissionDenied => Status::permission_denied(message),
            ProfileFailureKind::Unsupported => Status::failed_precondition(message),
            ProfileFailureKind::Busy => Status::resource_exhausted(message),
            ProfileFailureKind::InvalidArgument => Status::invalid_argument(message),
            ProfileFailureKind::Internal => Status::internal(message),
        }
    }
}

impl From<&larder_profile::ProfileError> for ProfileFailure {
    fn from(error: &larder_profile::ProfileError) -> ProfileFailure {
        use larder_profile::ProfileError as E;
        let kind = match error {
            E::InvalidSeconds { .. } => ProfileFailureKind::InvalidArgument,
            E::PermissionDenied { .. } => ProfileFailureKind::PermissionDenied,
            E::Unsupported(_) => ProfileFailureKind::Unsupported,
            E::ThreadGone { .. } | E::Io(_) => ProfileFailureKind::Internal,
        };
        ProfileFailure::new(kind, error.to_string())
    }
}

/// A node's answer to one order.
pub type ProfileOutcome = Result<Profile, ProfileFailure>;

struct Outstanding {
    order_id: u64,
    answer: oneshot::Sender<ProfileOutcome>,
}

#[derive(Default)]
struct Desk {
    next_order_id: u64,
    /// The order stream of each node that has one open (the latest one wins).
    streams: HashMap<NodeId, mpsc::Sender<ProfileOrder>>,
    outstanding: HashMap<NodeId, Outstanding>,
}

/// The control plane's table of order streams and outstanding orders (module docs, steps 2-4). Cloning
/// shares it. The lock is held for map operations only, never across an `.await`.
#[derive(Clone, Default)]
pub struct ProfileDesk(Arc<Mutex<Desk>>);

/// The operator's side of one outstanding order; dropping it withdraws the order (step 4).
pub struct PendingProfile {
    desk: ProfileDesk,
    node: NodeId,
    order_id: u64,
    answer: oneshot::Receiver<ProfileOutcome>,
}

impl ProfileDesk {
    fn lock(&self) -> MutexGuard<'_, Desk> {
        // Every operation leaves the maps consistent before it could panic.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A node opened its order stream: orders for it go to the returned receiver from now on.
    pub fn open_stream(&self, node: NodeId) -> mpsc::Receiver<ProfileOrder> {
        let (sender, receiver) = mpsc::channel(1);
        self.lock().streams.insert(node, sender);
        receiver
    }

    /// Step 2: records the order as `node`'s outstanding one and sends it, or says why not.
    pub fn order(&self, node: &NodeId, request: ProfileRequest) -> Result<PendingProfile, Status> {
        let mut desk = self.lock();
        if desk.outstanding.contains_key(node) {
            return Err(Status::resource_exhausted(format!(
                "node {node} is already taking a profile (one at a time per node)"
            )));
        }
        let order = ProfileOrder {
            order_id: desk.next_order_id + 1,
            request,
        };
        let Some(stream) = desk.streams.get(node) else {
            return Err(Status::unavailable(format!(
                "node {node} is not listening for profile orders"
            )));
        };
        let sent = stream.try_send(order);
        desk.next_order_id = order.order_id;
        match sent {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The node has not taken an earlier order off its stream (its agent is stuck or slow).
                return Err(Status::unavailable(format!(
                    "node {node} has not taken its last profile order yet"
                )));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The node's session ended.
                desk.streams.remove(node);
                return Err(Status::unavailable(format!(
                    "node {node} is not listening for profile orders"
                )));
            }
        }
        let (answer_sender, answer) = oneshot::channel();
        desk.outstanding.insert(
            node.clone(),
            Outstanding {
                order_id: order.order_id,
                answer: answer_sender,
            },
        );
        Ok(PendingProfile {
            desk: self.clone(),
            node: node.clone(),
            order_id: order.order_id,
            answer,
        })
    }

    /// Step 3: the node's answer to `order_id`; NOT_FOUND when that order is not outstanding.
    pub fn submit(
        &self,
        node: &NodeId,
        order_id: u64,
        outcome: ProfileOutcome,
    ) -> Result<(), Status> {
        let mut desk = self.lock();
        match desk.outstanding.get(node) {
            Some(outstanding) if outstanding.order_id == order_id => {}
            _ => {
                return Err(Status::not_found(format!(
                    "no profile order {order_id} is outstanding for node {node}"
                )))
            }
        }
        let outstanding = desk.outstanding.remove(node).expect("checked above");
        // The operator may have gone in the meantime; then the answer is dropped, as documented.
        let _ = outstanding.answer.send(outcome);
        Ok(())
    }

    fn withdraw(&self, node: &NodeId, order_id: u64) {
        let mut desk = self.lock();
        if desk
            .outstanding
            .get(node)
            .is_some_and(|outstanding| outstanding.order_id == order_id)
        {
            desk.outstanding.remove(node);
        }
    }
}

impl PendingProfile {
    /// Step 4: the node's answer within `deadline`.
    pub async fn answer(mut self, deadline: Duration) -> Result<Profile, Status> {
        match tokio::time::timeout(deadline, &mut self.answer).await {
            Ok(Ok(Ok(profile))) => Ok(profile),
            Ok(Ok(Err(failure))) => Err(failure.status()),
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "node {} went away before answering",
                self.node
            ))),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "node {} did not answer within {} s",
                self.node,
                deadline.as_secs()
            ))),
        }
    }
}

impl Drop for PendingProfile {
    fn drop(&mut self) {
        self.desk.withdraw(&self.node, self.order_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId("127.0.0.1:8080".to_string())
    }

    const REQUEST: ProfileRequest = ProfileRequest {
        shard: Some(ShardId(0)),
        seconds: 1,
    };

    #[test]
    fn a_node_without_an_order_stream_is_unavailable() {
        let desk = ProfileDesk::default();
        let error = desk.order(&node(), REQUEST).err().unwrap();
        assert_eq!(error.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn a_second_order_is_refused_until_the_first_is_answered() {
        let desk = ProfileDesk::default();
        let mut orders = desk.open_stream(node());
        let first = desk.order(&node(), REQUEST).unwrap();
        let second = desk.order(&node(), REQUEST).err().unwrap();
        assert_eq!(second.code(), tonic::Code::ResourceExhausted);
        let order = orders.recv().await.unwrap();
        assert_eq!(order.request, REQUEST);
        desk.submit(&node(), order.order_id, Ok(Profile::default()))
            .unwrap();
        assert_eq!(
            first.answer(Duration::from_secs(5)).await.unwrap(),
            Profile::default()
        );
        // Free again.
        let third = desk.order(&node(), REQUEST).unwrap();
        drop(third);
    }

    #[tokio::test]
    async fn a_withdrawn_order_frees_the_node_and_its_late_answer_is_refused() {
        let desk = ProfileDesk::default();
        let mut orders = desk.open_stream(node());
        let pending = desk.order(&node(), REQUEST).unwrap();
        let order = orders.recv().await.unwrap();
        drop(pending); // the operator went away
        let late = desk
            .submit(&node(), order.order_id, Ok(Profile::default()))
            .unwrap_err();
        assert_eq!(late.code(), tonic::Code::NotFound);
        assert!(desk.order(&node(), REQUEST).is_ok());
    }

    #[tokio::test]
    async fn a_refusal_becomes_its_status() {
        let desk = ProfileDesk::default();
        let mut orders = desk.open_stream(node());
        let pending = desk.order(&node(), REQUEST).unwrap();
        let order = orders.recv().await.unwrap();
        let failure = ProfileFailure::new(
            ProfileFailureKind::PermissionDenied,
            "kernel.perf_event_paranoid = 4",
        );
        desk.submit(&node(), order.order_id, Err(failure)).unwrap();
        let status = pending.answer(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("perf_event_paranoid"),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn an_unanswered_order_times_out_and_frees_the_node() {
        let desk = ProfileDesk::default();
        let mut orders = desk.open_stream(node());
        let pending = desk.order(&node(), REQUEST).unwrap();
        orders.recv().await.unwrap();
        let status = pending.answer(Duration::from_millis(1)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(desk.order(&node(), REQUEST).is_ok());
    }
}
