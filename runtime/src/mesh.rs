//! The mesh: bounded, typed message queues between every ordered pair of shards, plus one queue from ordinary
//! threads (the control plane) into each shard.
//!
//! What it owns: for N shards, N×(N−1) crossbeam bounded channels (shard i → shard j, i ≠ j), N control channels
//! (any thread → shard j), and one doorbell (eventfd) per shard (see `bell.rs` for the wake-up protocol). A shard
//! awaits [`ShardMesh::recv`] without busy polling: an empty mesh parks the shard in its I/O driver (after staying
//! awake for at most `spin_before_park_us`, default 50 µs, following the last message — see `bell.rs`).
//!
//! Back-pressure, never unbounded growth: every queue holds at most its capacity. [`ShardMesh::try_send`] on a full
//! queue returns [`MeshError::Full`] with the message handed back; [`ShardMesh::send`] instead waits until the
//! receiver frees a slot (the receiver rings the sender's doorbell when it pops from a queue whose sender is
//! waiting). [`ControlSender::send_timeout`] blocks an ordinary thread for at most the given time.
//!
//! Fairness: `recv` scans the control queue and the shard queues round-robin from a rotating cursor, so one busy
//! sender cannot starve the others.
//!
//! Memory: a crossbeam bounded channel allocates its slots up front, so the mesh takes about
//! `N × (N − 1) × shard_queue_capacity × (size_of::<M>() + 8)` bytes — 2 shards × 256 slots × 64-byte messages is
//! 36 KiB; 64 shards would be 260 MiB, hence [`SHARDS_MAX`] and the small default capacity.
//!
//! | limit | value | why |
//! |---|---|---|
//! | [`SHARD_QUEUE_CAPACITY_DEFAULT`] | 256 messages per ordered pair | a handoff burst of one accept batch fits |
//! | [`CONTROL_QUEUE_CAPACITY_DEFAULT`] | 256 messages per shard | control traffic is a few messages a second |
//! | [`QUEUE_CAPACITY_MAX`] | 65,536 | caps the up-front slot allocation |
//! | [`SHARDS_MAX`] | 256 | N² channels; beyond this a hierarchy would be needed |
//! | [`SPIN_BEFORE_PARK_US_DEFAULT`] | 50 µs awake after mesh activity (max 10 ms) | a round trip costs 2 wake-ups otherwise |

use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};

use crate::bell::{Doorbell, LocalBell, Reason};
use crate::stats::{DepthProbe, StatsCell};
use crate::ShardId;

/// Default capacity of the queue from one shard to another.
pub const SHARD_QUEUE_CAPACITY_DEFAULT: usize = 256;
/// Default capacity of the control-plane queue into one shard.
pub const CONTROL_QUEUE_CAPACITY_DEFAULT: usize = 256;
/// Largest allowed capacity of any mesh queue.
pub const QUEUE_CAPACITY_MAX: usize = 65_536;
/// Default time a shard stays awake after mesh activity before parking in its driver.
pub const SPIN_BEFORE_PARK_US_DEFAULT: u64 = 50;
/// Largest allowed `spin_before_park_us`.
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 10_000;
/// Most shards a mesh connects.
pub const SHARDS_MAX: usize = 256;

/// Queue capacities of a mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshConfig {
    /// Messages each shard → shard queue holds.
    pub shard_queue_capacity: usize,
    /// Messages each control → shard queue holds.
    pub control_queue_capacity: usize,
    /// How long a shard's doorbell pump stays awake (yielding, not parked) after the last mesh activity; 0 parks
    /// at once. See `bell.rs`, pump step 2.
    pub spin_before_park_us: u64,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            shard_queue_capacity: SHARD_QUEUE_CAPACITY_DEFAULT,
            control_queue_capacity: CONTROL_QUEUE_CAPACITY_DEFAULT,
            spin_before_park_us: SPIN_BEFORE_PARK_US_DEFAULT,
        }
    }
}

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("queue to {to} is full ({capacity} messages)")]
    Full { to: ShardId, capacity: usize },
    #[error("{to} has stopped")]
    Disconnected { to: ShardId },
    #[error("{to} does not exist (the mesh has {shard_count} shards)")]
    NoSuchShard { to: ShardId, shard_count: usize },
    #[error("{shard} cannot send a mesh message to itself")]
    ToSelf { shard: ShardId },
}

/// Errors building a mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshBuildError {
    #[error("shard count {shard_count} is not in 1..={SHARDS_MAX}")]
    ShardCount { shard_count: usize },
    #[error("queue capacity {capacity} is not in 1..={QUEUE_CAPACITY_MAX}")]
    Capacity { capacity: usize },
    #[error("spin_before_park_us {spin_before_park_us} is over {SPIN_BEFORE_PARK_US_MAX}")]
    Spin { spin_before_park_us: u64 },
    #[error("creating a shard eventfd: {0}")]
    Eventfd(std::io::Error),
}

/// A refused message, handed back with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct MeshSendError<M> {
    pub error: MeshError,
    pub message: M,
}

/// Where a received message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An ordinary thread, through a [`ControlSender`].
    Control,
    /// Another shard.
    Shard(ShardId),
}

/// A received message and its sender.
#[derive(Debug)]
pub struct Envelope<M> {
    pub from: Source,
    pub message: M,
}

/// One shard's ends of the mesh before it is attached to its thread (`Send`: moved into the shard thread).
pub(crate) struct MeshEndpoint<M> {
    shard: ShardId,
    /// `outgoing[j]`: queue to shard j (`None` for j == self).
    outgoing: Vec<Option<Sender<M>>>,
    /// `incoming[i]`: queue from shard i (`None` for i == self).
    incoming: Vec<Option<Receiver<M>>>,
    control: Receiver<M>,
    /// Every shard's doorbell, indexed by shard.
    bells: Vec<Arc<Doorbell>>,
    /// `waiting_out[j]`: set while this shard waits for space in its queue to j.
    waiting_out: Vec<Arc<AtomicBool>>,
    /// `waiting_in[i]`: set while shard i waits for space in its queue to this shard.
    waiting_in: Vec<Arc<AtomicBool>>,
    capacity: usize,
}

/// The parts of a freshly built mesh.
pub(crate) struct MeshParts<M> {
    pub(crate) endpoints: Vec<MeshEndpoint<M>>,
    pub(crate) controls: Vec<ControlSender<M>>,
    pub(crate) depth_probes: Vec<DepthProbe>,
    pub(crate) bells: Vec<Arc<Doorbell>>,
}

/// Builds the queues and doorbells for `shard_count` shards.
pub(crate) fn build<M: Send + 'static>(
    shard_count: usize,
    config: MeshConfig,
) -> Result<MeshParts<M>, MeshBuildError> {
    if shard_count == 0 || shard_count > SHARDS_MAX {
        return Err(MeshBuildError::ShardCount { shard_count });
    }
    if config.spin_before_park_us > SPIN_BEFORE_PARK_US_MAX {
        return Err(MeshBuildError::Spin {
            spin_before_park_us: config.spin_before_park_us,
        });
    }
    for capacity in [config.shard_queue_capacity, config.control_queue_capacity] {
        if capacity == 0 || capacity > QUEUE_CAPACITY_MAX {
            return Err(MeshBuildError::Capacity { capacity });
        }
    }
    let bells = (0..shard_count)
        .map(|_| Doorbell::new())
        .collect::<Result<Vec<_>, _>>()
        .map_err(MeshBuildError::Eventfd)?;
    // pairs[i][j]: channel i → j and its "sender waits for space" flag.
    type Pair<M> = Option<(Sender<M>, Receiver<M>, Arc<AtomicBool>)>;
    let pairs: Vec<Vec<Pair<M>>> = (0..shard_count)
        .map(|i| {
            (0..shard_count)
                .map(|j| {
                    (i != j).then(|| {
                        let (tx, rx) = bounded(config.shard_queue_capacity);
                        (tx, rx, Arc::new(AtomicBool::new(false)))
                    })
                })
                .collect()
        })
        .collect();
    let mut endpoints = Vec::with_capacity(shard_count);
    let mut controls = Vec::with_capacity(shard_count);
    let mut depth_probes: Vec<DepthProbe> = Vec::with_capacity(shard_count);
    let unused_flag = Arc::new(AtomicBool::new(false));
    for me in 0..shard_count {
        let (control_tx, control_rx) = bounded(config.control_queue_capacity);
        let outgoing = (0..shard_count)
            .map(|j| pairs[me][j].as_ref().map(|p| p.0.clone()))
            .collect();
        let incoming = (0..shard_count)
            .map(|i| pairs[i][me].as_ref().map(|p| p.1.clone()))
            .collect();
        let flag = |pair: &Pair<M>| pair.as_ref().map_or(unused_flag.clone(), |p| p.2.clone());
        let waiting_out = (0..shard_count).map(|j| flag(&pairs[me][j])).collect();
        let waiting_in = (0..shard_count).map(|i| flag(&pairs[i][me])).collect();
        // The probe holds senders (not receivers), so a stopped shard still reads as disconnected to its peers.
        let probe_senders: Vec<Option<Sender<M>>> = (0..shard_count)
            .map(|i| pairs[i][me].as_ref().map(|p| p.0.clone()))
            .collect();
        let probe_control = control_tx.clone();
        depth_probes.push(Box::new(move || {
            std::iter::once(probe_control.len())
                .chain(
                    probe_senders
                        .iter()
                        .map(|s| s.as_ref().map_or(0, Sender::len)),
                )
                .collect()
        }));
        controls.push(ControlSender {
            to: ShardId(me as u32),
            sender: control_tx,
            bell: bells[me].clone(),
            capacity: config.control_queue_capacity,
        });
        endpoints.push(MeshEndpoint {
            shard: ShardId(me as u32),
            outgoing,
            incoming,
            control: control_rx,
            bells: bells.clone(),
            waiting_out,
            waiting_in,
            capacity: config.shard_queue_capacity,
        });
    }
    Ok(MeshParts {
        endpoints,
        controls,
        depth_probes,
        bells,
    })
}

/// A shard's view of the mesh, living on the shard's thread (`!Send`). Obtain it from the shard context.
pub struct ShardMesh<M> {
    endpoint: MeshEndpoint<M>,
    local: Rc<LocalBell>,
    stats: Arc<StatsCell>,
    /// Next source `recv` looks at first: 0 = control, 1 + i = shard i.
    cursor: std::cell::Cell<usize>,
}

impl<M: Send + 'static> ShardMesh<M> {
    pub(crate) fn new(
        endpoint: MeshEndpoint<M>,
        local: Rc<LocalBell>,
        stats: Arc<StatsCell>,
    ) -> Self {
        ShardMesh {
            endpoint,
            local,
            stats,
            cursor: std::cell::Cell::new(0),
        }
    }

    /// This shard.
    pub fn shard(&self) -> ShardId {
        self.endpoint.shard
    }

    /// Shards in the mesh.
    pub fn shard_count(&self) -> usize {
        self.endpoint.outgoing.len()
    }

    /// Capacity of each shard → shard queue.
    pub fn queue_capacity(&self) -> usize {
        self.endpoint.capacity
    }

    fn sender(&self, to: ShardId) -> Result<&Sender<M>, MeshError> {
        match self.endpoint.outgoing.get(to.index()) {
            None => Err(MeshError::NoSuchShard {
                to,
                shard_count: self.shard_count(),
            }),
            Some(None) => Err(MeshError::ToSelf { shard: to }),
            Some(Some(sender)) => Ok(sender),
        }
    }

    /// Queues `message` for shard `to` without waiting; a full queue hands the message back.
    pub fn try_send(&self, to: ShardId, message: M) -> Result<(), MeshSendError<M>> {
        let result = self.offer(to, message);
        if let Err(MeshSendError {
            error: MeshError::Full { .. },
            ..
        }) = &result
        {
            StatsCell::bump(&self.stats.mesh_refused_full);
        }
        result
    }

    /// `try_send` without counting a refusal (`send` retries and would count each attempt).
    fn offer(&self, to: ShardId, message: M) -> Result<(), MeshSendError<M>> {
        let sender = match self.sender(to) {
            Ok(sender) => sender,
            Err(error) => return Err(MeshSendError { error, message }),
        };
        match sender.try_send(message) {
            Ok(()) => {
                StatsCell::bump(&self.stats.mesh_sent);
                self.endpoint.bells[to.index()].ring(Reason::Message);
                Ok(())
            }
            Err(TrySendError::Full(message)) => Err(MeshSendError {
                error: MeshError::Full {
                    to,
                    capacity: self.endpoint.capacity,
                },
                message,
            }),
            Err(TrySendError::Disconnected(message)) => Err(MeshSendError {
                error: MeshError::Disconnected { to },
                message,
            }),
        }
    }

    /// Queues `message` for shard `to`, waiting (without spinning) while the queue is full.
    /// Fails only if `to` is invalid or has stopped. Dropping the future before it resolves drops the message.
    pub async fn send(&self, to: ShardId, message: M) -> Result<(), MeshSendError<M>> {
        if let Err(error) = self.sender(to) {
            return Err(MeshSendError { error, message });
        }
        let mut pending = Some(message);
        let waiting = &self.endpoint.waiting_out[to.index()];
        self.local
            .wait_for(Reason::Space, || {
                let message = pending.take().expect("message is present until delivered");
                match self.offer(to, message) {
                    Ok(()) => Some(Ok(())),
                    Err(MeshSendError {
                        error: MeshError::Full { .. },
                        message,
                    }) => {
                        pending = Some(message);
                        // Ask the receiver to ring us when it pops; fence pairs with its pop-then-check.
                        waiting.store(true, Ordering::SeqCst);
                        fence(Ordering::SeqCst);
                        None
                    }
                    Err(other) => Some(Err(other)),
                }
            })
            .await
    }

    /// Takes one waiting message, if any, scanning sources round-robin.
    pub fn try_recv(&self) -> Option<Envelope<M>> {
        let sources = self.shard_count() + 1;
        let start = self.cursor.get();
        for step in 0..sources {
            let source = (start + step) % sources;
            let received = if source == 0 {
                self.endpoint.control.try_recv().map(|m| {
                    StatsCell::bump(&self.stats.control_received);
                    Envelope {
                        from: Source::Control,
                        message: m,
                    }
                })
            } else {
                let from = source - 1;
                let Some(receiver) = &self.endpoint.incoming[from] else {
                    continue;
                };
                receiver.try_recv().map(|m| {
                    StatsCell::bump(&self.stats.mesh_received);
                    self.release_sender(from);
                    Envelope {
                        from: Source::Shard(ShardId(from as u32)),
                        message: m,
                    }
                })
            };
            match received {
                Ok(envelope) => {
                    self.cursor.set((source + 1) % sources);
                    return Some(envelope);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
        }
        None
    }

    /// After popping from shard `from`'s queue: if that shard waits for space, ring it.
    fn release_sender(&self, from: usize) {
        fence(Ordering::SeqCst);
        let waiting = &self.endpoint.waiting_in[from];
        if waiting.load(Ordering::Relaxed) && waiting.swap(false, Ordering::SeqCst) {
            self.endpoint.bells[from].ring(Reason::Space);
        }
    }

    /// Waits for the next message from any shard or the control plane. Cancel-safe: a message is only taken in
    /// the poll that returns it, so racing `recv` against shutdown (and dropping it) loses nothing.
    pub async fn recv(&self) -> Envelope<M> {
        self.local
            .wait_for(Reason::Message, || self.try_recv())
            .await
    }

    /// Messages waiting in this shard's incoming queues (control + all shards).
    pub fn queued(&self) -> usize {
        self.endpoint.control.len()
            + self
                .endpoint
                .incoming
                .iter()
                .flatten()
                .map(Receiver::len)
                .sum::<usize>()
    }
}

impl<M> std::fmt::Debug for ShardMesh<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMesh")
            .field("shard", &self.endpoint.shard)
            .finish()
    }
}

/// Sends messages from an ordinary thread (the control plane) into one shard. `Clone + Send + Sync`.
pub struct ControlSender<M> {
    to: ShardId,
    sender: Sender<M>,
    bell: Arc<Doorbell>,
    capacity: usize,
}

impl<M> Clone for ControlSender<M> {
    fn clone(&self) -> Self {
        ControlSender {
            to: self.to,
            sender: self.sender.clone(),
            bell: self.bell.clone(),
            capacity: self.capacity,
        }
    }
}

impl<M> std::fmt::Debug for ControlSender<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSender")
            .field("to", &self.to)
            .finish()
    }
}

impl<M: Send + 'static> ControlSender<M> {
    /// The shard this sender delivers to.
    pub fn shard(&self) -> ShardId {
        self.to
    }

    /// Queues without blocking; a full queue hands the message back.
    pub fn try_send(&self, message: M) -> Result<(), MeshSendError<M>> {
        match self.sender.try_send(message) {
            Ok(()) => {
                self.bell.ring(Reason::Message);
                Ok(())
            }
            Err(TrySendError::Full(message)) => Err(MeshSendError {
                error: MeshError::Full {
                    to: self.to,
                    capacity: self.capacity,
                },
                message,
            }),
            Err(TrySendError::Disconnected(message)) => Err(MeshSendError {
                error: MeshError::Disconnected { to: self.to },
                message,
            }),
        }
    }

    /// Queues, blocking the calling (ordinary) thread for at most `timeout` while the queue is full.
    pub fn send_timeout(&self, message: M, timeout: Duration) -> Result<(), MeshSendError<M>> {
        match self.sender.send_timeout(message, timeout) {
            Ok(()) => {
                self.bell.ring(Reason::Message);
                Ok(())
            }
            Err(crossbeam_channel::SendTimeoutError::Timeout(message)) => Err(MeshSendError {
                error: MeshError::Full {
                    to: self.to,
                    capacity: self.capacity,
                },
                message,
            }),
            Err(crossbeam_channel::SendTimeoutError::Disconnected(message)) => Err(MeshSendError {
                error: MeshError::Disconnected { to: self.to },
                message,
            }),
        }
    }
}
