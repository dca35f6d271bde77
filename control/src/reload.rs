//! `ReloadNode`: the control plane relays an operator's reload to one node and its answer back.
//!
//! # What it owns
//! [`ReloadRelay`]: each connected node's command stream (opened by the node's `WatchReloads`) and the
//! `ReloadNode` calls waiting for an answer. It knows nothing of what a node reloads.
//!
//! # One reload
//! 1. `ReloadNode(node_id)` (an operator mutation: token or loopback) checks that the node is registered
//!    (NOT_FOUND), then [`ReloadRelay::reload`]: a fresh `reload_id` is recorded as waiting (at most
//!    [`RELOADS_WAITING_MAX`], else RESOURCE_EXHAUSTED) and a `ReloadCommand` goes into the node's stream
//!    (none open, or its queue of [`COMMAND_QUEUE_MAX`] full: UNAVAILABLE, nothing waits).
//! 2. The node's agent reloads its file (`NodeHooks::reload`) and calls `ReloadDone` with the id and the
//!    outcome; [`ReloadRelay::done`] hands it to the waiting call.
//! 3. The call answers the node's applied and kept settings, or FAILED_PRECONDITION with the node's message.
//!    With no answer within [`RELOAD_TIMEOUT`] (10 s) the id stops waiting and the call is DEADLINE_EXCEEDED;
//!    the node may still have reloaded (a late `ReloadDone` is NOT_FOUND), which GetNode shows.
//!
//! Why a stream of its own and not a field of `Steering`: steering is one state broadcast to every node and
//! versioned (a node applies only the latest), while a reload is a command to one node with an answer. The
//! node's own gRPC server would be simpler still, but a node has none: it only dials out.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use larder_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::state::NodeId;

/// Longest wait for a node's answer.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most `ReloadNode` calls waiting at once over all nodes.
pub const RELOADS_WAITING_MAX: usize = 64;
/// Commands queued to one node's stream.
pub const COMMAND_QUEUE_MAX: usize = 4;

/// Commands to nodes and the calls waiting for their answers (module docs).
#[derive(Debug, Default)]
pub(crate) struct ReloadRelay {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    streams: HashMap<NodeId, mpsc::Sender<pb::ReloadCommand>>,
    waiting: HashMap<u64, (NodeId, oneshot::Sender<pb::ReloadResult>)>,
    next_id: u64,
}

impl ReloadRelay {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is one insert or remove: a panic elsewhere leaves nothing half-written.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `WatchReloads`: the node's command stream from now on (replacing an older one of the same node).
    pub fn watch(&self, node: NodeId) -> mpsc::Receiver<pb::ReloadCommand> {
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE_MAX);
        self.lock().streams.insert(node, sender);
        receiver
    }

    /// Steps 1 and 3: sends a command to `node` and waits for its answer.
    pub async fn reload(&self, node: &NodeId) -> Result<pb::ReloadResult, Status> {
        let (reload_id, answer) = {
            let mut inner = self.lock();
            if inner.waiting.len() >= RELOADS_WAITING_MAX {
                return Err(Status::resource_exhausted(format!(
                    "{RELOADS_WAITING_MAX} reloads are already waiting for their nodes"
                )));
            }
            let not_connected = || Status::unavailable(format!("node {} is not connected", node.0));
            let stream = inner.streams.get(node).ok_or_else(not_connected)?.clone();
            inner.next_id += 1;
            let reload_id = inner.next_id;
            let command = pb::ReloadCommand { reload_id };
            if let Err(error) = stream.try_send(command) {
                if matches!(error, mpsc::error::TrySendError::Closed(_)) {
                    inner.streams.remove(node);
                    return Err(not_connected());
                }
                return Err(Status::unavailable(format!(
                    "node {} has {COMMAND_QUEUE_MAX} reloads queued",
                    node.0
                )));
            }
            let (sender, answer) = oneshot::channel();
            inner.waiting.insert(reload_id, (node.clone(), sender));
            (reload_id, answer)
        };
        match tokio::time::timeout(RELOAD_TIMEOUT, answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) | Err(_) => {
                self.lock().waiting.remove(&reload_id);
                Err(Status::deadline_exceeded(format!(
                    "node {} did not answer the reload within {} s",
                    node.0,
                    RELOAD_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Step 2: `ReloadDone` from a node.
    pub fn done(&self, result: pb::ReloadResult) -> Result<(), Status> {
        let mut inner = self.lock();
        let from_that_node = inner
            .waiting
            .get(&result.reload_id)
            .is_some_and(|(node, _)| node.0 == result.node_id);
        if !from_that_node {
            return Err(Status::not_found(format!(
                "no reload {} of node {} is waiting (answered too late?)",
                result.reload_id, result.node_id
            )));
        }
        if let Some((_, sender)) = inner.waiting.remove(&result.reload_id) {
            // The caller may have gone (cancelled): nothing to tell then.
            let _ = sender.send(result);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId(name.to_string())
    }

    #[tokio::test]
    async fn a_command_reaches_the_node_and_its_answer_the_caller() {
        let relay = std::sync::Arc::new(ReloadRelay::default());
        let mut commands = relay.watch(node("a"));
        let caller = {
            let relay = std::sync::Arc::clone(&relay);
            tokio::spawn(async move { relay.reload(&node("a")).await })
        };
        let command = commands.recv().await.expect("a command");
        let wrong_node = pb::ReloadResult {
            node_id: "b".to_string(),
            reload_id: command.reload_id,
            ..pb::ReloadResult::default()
        };
        assert_eq!(
            relay.done(wrong_node).expect_err("not b's").code(),
            tonic::Code::NotFound
        );
        let answer = pb::ReloadResult {
            node_id: "a".to_string(),
            reload_id: command.reload_id,
            ok: true,
            applied: vec!["containers.gold.shares".to_string()],
            ..pb::ReloadResult::default()
        };
        relay.done(answer.clone()).expect("waiting");
        assert_eq!(caller.await.expect("joined").expect("answered"), answer);
        assert_eq!(
            relay.done(answer).expect_err("answered once").code(),
            tonic::Code::NotFound
        );
    }

    #[tokio::test]
    async fn a_node_without_a_stream_is_unavailable_and_nothing_waits() {
        let relay = ReloadRelay::default();
        let status = relay.reload(&node("a")).await.expect_err("no stream");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let commands = relay.watch(node("a"));
        drop(commands);
        let status = relay.reload(&node("a")).await.expect_err("stream gone");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(relay.lock().waiting.is_empty());
        assert!(
            relay.lock().streams.is_empty(),
            "a closed stream is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_never_answers_times_out_and_stops_waiting() {
        let relay = ReloadRelay::default();
        let _commands = relay.watch(node("a"));
        let status = relay.reload(&node("a")).await.expect_err("no answer");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(relay.lock().waiting.is_empty());
    }
}
