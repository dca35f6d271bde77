//! Admission: which containers a scheduler has, their shares and limits, and which tasks get in.
//!
//! # What this file owns
//! The part of [`ContainerScheduler`] that changes the container table or the task table from outside a poll:
//! [`add_container`](ContainerScheduler::add_container), [`lookup`](ContainerScheduler::lookup),
//! [`set_shares`](ContainerScheduler::set_shares), [`set_limits`](ContainerScheduler::set_limits) and
//! [`spawn`](ContainerScheduler::spawn).
//!
//! # Invariants
//! - Per container: `tasks_active <= tasks_max` and, at spawn, `tasks_queued <= queued_max`; over either,
//!   [`ContainerScheduler::spawn`] returns [`ContainerError::OverLimit`] and counts a rejection — nothing queues
//!   without bound. (Wakes of existing tasks are never refused; their number is bounded by `tasks_max`.)
//! - Container names are unique; a new container starts at the floor virtual runtime of the last pick, so it
//!   cannot claim credit for the time before it existed.
//! - New shares apply from the next poll charged to the container; new limits do not affect tasks already admitted.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | `containers_max` | default 64, at most 4,096 per scheduler | picks scan the awake containers |
//! | `tasks_max` | 1..=1,048,576 per container (`TASKS_MAX_LIMIT`) | bounds the task table |
//! | `queued_max` | 1..=1,048,576 per container | bounds a ready queue at spawn |
//!
//! # Cost
//! `spawn`: one `Box` for the future, one `Arc` for its waker, O(1) otherwise. `add_container` and `lookup`:
//! O(containers) (a name scan).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::task::Waker;

use super::clock::Clock;
use super::queue::{Cap, Container};
use super::scheduler::ContainerScheduler;
use super::spec::{
    check_cpu_percent_max, check_send_rate, check_shares, check_spec, ContainerError, ContainerId,
    ContainerLimit, ContainerSpec, TaskId, VRUNTIME_SCALE,
};
use super::task::{TaskHeader, TaskKey, TaskSlot, TASK_QUEUED};

impl<C: Clock> ContainerScheduler<C> {
    /// Adds a container; names are unique.
    pub fn add_container(&self, spec: ContainerSpec) -> Result<ContainerId, ContainerError> {
        check_spec(&spec)?;
        let mut state = self.shared.state.borrow_mut();
        if state.containers.len() >= self.shared.config.containers_max {
            return Err(ContainerError::TooManyContainers {
                containers_max: self.shared.config.containers_max,
            });
        }
        if state.containers.iter().any(|c| c.spec.name == spec.name) {
            return Err(ContainerError::DuplicateName { name: spec.name });
        }
        let id = ContainerId(state.containers.len() as u32);
        let vruntime = state.floor_vruntime;
        let cap = Cap::new(
            spec.cpu_percent_max,
            self.shared.config.cap_period_ns,
            self.shared.clock.now_ns(),
        );
        state.containers.push(Container {
            vruntime_per_ns: VRUNTIME_SCALE / spec.shares as u64,
            spec,
            vruntime,
            awake: false,
            fresh: false,
            last_poll_ns: 0,
            ready: VecDeque::new(),
            cpu_ns: 0,
            poll_cpu_ns: 0,
            polls: 0,
            turn_ops: 0,
            turn_poll_ns: 0,
            cap,
            tasks_spawned: 0,
            tasks_completed: 0,
            tasks_active: 0,
            tasks_exempt: 0,
            rejections: 0,
        });
        Ok(id)
    }

    /// The container with this name.
    pub fn lookup(&self, name: &str) -> Option<ContainerId> {
        let state = self.shared.state.borrow();
        state
            .containers
            .iter()
            .position(|c| c.spec.name == name)
            .map(|index| ContainerId(index as u32))
    }

    /// Changes a container's shares; applies from the next poll charged to it.
    pub fn set_shares(&self, id: ContainerId, shares: u32) -> Result<(), ContainerError> {
        self.with_container(id, |c| {
            check_shares(&c.spec.name, shares)?;
            c.spec.shares = shares;
            c.vruntime_per_ns = VRUNTIME_SCALE / shares as u64;
            Ok(())
        })
    }

    /// Changes a container's limits; tasks already admitted are not affected.
    pub fn set_limits(
        &self,
        id: ContainerId,
        tasks_max: u32,
        queued_max: u32,
    ) -> Result<(), ContainerError> {
        self.with_container(id, |c| {
            check_spec(&ContainerSpec {
                tasks_max,
                queued_max,
                ..c.spec.clone()
            })?;
            c.spec.tasks_max = tasks_max;
            c.spec.queued_max = queued_max;
            Ok(())
        })
    }

    /// Caps a container at `percent` of the shard's CPU (0 = no cap, else 1..=100), from now on: the current
    /// period's budget starts afresh.
    pub fn set_cpu_percent_max(&self, id: ContainerId, percent: u32) -> Result<(), ContainerError> {
        let period_ns = self.shared.config.cap_period_ns;
        let now_ns = self.shared.clock.now_ns();
        self.with_container(id, |c| {
            check_cpu_percent_max(&c.spec.name, percent)?;
            c.spec.cpu_percent_max = percent;
            let throttles = c.cap.throttles;
            c.cap = Cap::new(percent, period_ns, now_ns);
            c.cap.throttles = throttles;
            Ok(())
        })
    }

    /// Sets the per-connection send rate the server paces the container's responses to (0 = none).
    pub fn set_send_rate(
        &self,
        id: ContainerId,
        bytes_per_second: u64,
    ) -> Result<(), ContainerError> {
        self.with_container(id, |c| {
            check_send_rate(&c.spec.name, bytes_per_second)?;
            c.spec.send_rate_bytes_per_second = bytes_per_second;
            Ok(())
        })
    }

    /// The container's per-connection send rate (bytes/s; 0 = none, also for an unknown id).
    pub fn send_rate(&self, id: ContainerId) -> u64 {
        let state = self.shared.state.borrow();
        state
            .containers
            .get(id.index())
            .map_or(0, |c| c.spec.send_rate_bytes_per_second)
    }

    fn with_container<R>(
        &self,
        id: ContainerId,
        f: impl FnOnce(&mut Container) -> Result<R, ContainerError>,
    ) -> Result<R, ContainerError> {
        let mut state = self.shared.state.borrow_mut();
        match state.containers.get_mut(id.index()) {
            Some(container) => f(container),
            None => Err(ContainerError::UnknownContainer { container: id }),
        }
    }

    /// Spawns a task into a container. Refused with [`ContainerError::OverLimit`] (and counted as a rejection)
    /// when the container already has `tasks_max` tasks or `queued_max` ready tasks.
    pub fn spawn<F>(&self, id: ContainerId, future: F) -> Result<TaskId, ContainerError>
    where
        F: Future<Output = ()> + 'static,
    {
        self.spawn_checked(id, future, true)
    }

    /// Spawns a task into a container without checking its limits (it still counts as live): for a shard's own
    /// long-lived work charged to a container, such as the accept loop of the container new connections start
    /// in, which must never be refused.
    pub fn spawn_unlimited<F>(&self, id: ContainerId, future: F) -> Result<TaskId, ContainerError>
    where
        F: Future<Output = ()> + 'static,
    {
        self.spawn_checked(id, future, false)
    }

    fn spawn_checked<F>(
        &self,
        id: ContainerId,
        future: F,
        check_limits: bool,
    ) -> Result<TaskId, ContainerError>
    where
        F: Future<Output = ()> + 'static,
    {
        let key = {
            let mut state = self.shared.state.borrow_mut();
            let Some(c) = state.containers.get_mut(id.index()) else {
                return Err(ContainerError::UnknownContainer { container: id });
            };
            let over = if !check_limits {
                None
            } else if c.tasks_active - c.tasks_exempt >= c.spec.tasks_max {
                Some((
                    ContainerLimit::TasksMax,
                    c.spec.tasks_max,
                    c.tasks_active - c.tasks_exempt,
                ))
            } else if c.ready.len() as u32 >= c.spec.queued_max {
                Some((
                    ContainerLimit::QueuedMax,
                    c.spec.queued_max,
                    c.ready.len() as u32,
                ))
            } else {
                None
            };
            if let Some((limit, max, current)) = over {
                c.rejections += 1;
                return Err(ContainerError::OverLimit {
                    container: id,
                    limit,
                    max,
                    value: current + 1,
                });
            }
            c.tasks_spawned += 1;
            state.task_started(id.0, !check_limits);
            let index = match state.free_tasks.pop() {
                Some(index) => index,
                None => {
                    state.tasks.push(TaskSlot {
                        generation: 0,
                        container: 0,
                        live: false,
                        exempt: false,
                        future: None,
                        waker: None,
                        header: None,
                    });
                    (state.tasks.len() - 1) as u32
                }
            };
            let slot = &mut state.tasks[index as usize];
            let key = TaskKey {
                index,
                generation: slot.generation,
            };
            let header = Arc::new(TaskHeader {
                key,
                state: AtomicU8::new(TASK_QUEUED),
                inbox: self.shared.inbox.clone(),
            });
            slot.container = id.0;
            slot.live = true;
            slot.exempt = !check_limits;
            slot.future = Some(Box::pin(future));
            slot.waker = Some(Waker::from(header.clone()));
            slot.header = Some(header);
            state.enqueue(key);
            key
        };
        self.shared.inbox.wake_outer();
        Ok(TaskId {
            index: key.index,
            generation: key.generation,
        })
    }
}
