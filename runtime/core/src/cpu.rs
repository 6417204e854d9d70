//! How guests share the cores. Every guest yields its thread at each epoch
//! tick; on its own that is round-robin, so 64 scripts stuck in loops would
//! each get a turn before a new event's handler (measured: an ordinary
//! event's p99 went from 0.24 ms to 20 s). A guest that has computed for
//! [`LONG_RUNNING_TICKS`] ticks without blocking is long-running: from then
//! on it runs only while it holds one of a few long-running slots, queueing
//! for one (first come, first served) at every tick. Fewer slots than cores
//! leave cores to the guests that compute briefly and block, which is every
//! ordinary event, however many long-running guests there are.
//!
//! A guest's first ticks are charged to its project: a project one of whose
//! guests ran long within the last [`PROJECT_MEMORY`] has its next
//! guests queue for a slot before they run at all. Without that, a tenant
//! that starts runaways faster than they end (each spending its first ticks
//! unqueued) would take the cores from every other tenant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

/// Ticks a guest computes without blocking before it counts as long-running.
/// The first tick may come a moment after the guest started (the epoch
/// advances on its own clock), so two ticks mean it ran through at least one
/// whole tick: an ordinary handler runs for well under a millisecond.
const LONG_RUNNING_TICKS: u64 = 2;

/// How long a project is charged for a guest that became long-running: its
/// guests started meanwhile queue for a slot from the start. Long enough to
/// span a burst of runaway events, short enough that a project that fixed
/// its script is soon served like any other.
const PROJECT_MEMORY: Duration = Duration::from_secs(10);

/// Projects remembered at most; past it, those not charged within
/// [`PROJECT_MEMORY`] are forgotten, and if all are, no new one is added
/// (a bound on memory that errs towards serving).
const MAX_REMEMBERED_PROJECTS: usize = 10_000;

/// The long-running slots a sandbox's guests share, and the projects whose
/// guests ran long lately.
pub(crate) struct CpuSlots {
    slots: Arc<Semaphore>,
    long_running_projects: Mutex<HashMap<String, Instant>>,
}

impl CpuSlots {
    /// `count` long-running slots (at least one).
    pub fn new(count: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(count.max(1))),
            long_running_projects: Mutex::default(),
        })
    }

    /// One of `project`'s guests is long-running (charged at each of its
    /// ticks, so a project whose guests keep running long stays charged).
    fn charge(&self, project: &str) {
        let mut projects = lock(&self.long_running_projects);
        if let Some(when) = projects.get_mut(project) {
            *when = Instant::now();
            return;
        }
        if projects.len() >= MAX_REMEMBERED_PROJECTS {
            projects.retain(|_, when| when.elapsed() < PROJECT_MEMORY);
            if projects.len() >= MAX_REMEMBERED_PROJECTS {
                return;
            }
        }
        projects.insert(project.to_string(), Instant::now());
    }

    /// Whether `project` is charged: one of its guests ran long lately.
    fn charged(&self, project: &str) -> bool {
        lock(&self.long_running_projects)
            .get(project)
            .is_some_and(|when| when.elapsed() < PROJECT_MEMORY)
    }
}

/// Long-running slots by default: one core fewer than the machine has, so
/// that one core always serves guests that compute briefly; at least one.
pub fn default_long_running_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |cores| cores.get().saturating_sub(1))
        .max(1)
}

/// One worker's share of the cores.
pub(crate) struct CpuShare {
    slots: Arc<CpuSlots>,
    /// The worker's project; `None` for the instances that compile scripts.
    project: Option<String>,
    /// The slot the guest holds while it runs long; the future that queues
    /// for it runs outside the Store, so it is shared.
    slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// Ticks run since the guest last blocked in a host call.
    streak: u64,
    /// The guest was just let back in after yielding its thread or after
    /// queueing for a slot.
    resumed: bool,
}

impl CpuShare {
    /// A share among `slots`, for a worker of `project`.
    pub fn new(slots: Arc<CpuSlots>, project: Option<String>) -> Self {
        Self {
            slots,
            project,
            slot: Arc::default(),
            streak: 0,
            resumed: false,
        }
    }

    /// Before the guest first runs: a guest of a charged project is
    /// long-running from the start and waits for a slot (or its `deadline`,
    /// when the first tick stops it).
    pub async fn start(&mut self, deadline: Instant) {
        if !self
            .project
            .as_deref()
            .is_some_and(|project| self.slots.charged(project))
        {
            return;
        }
        self.streak = LONG_RUNNING_TICKS;
        take_slot(self.slots.slots.clone(), &self.slot, deadline).await;
    }

    /// Whether this deadline callback is the one right after a yield or
    /// queueing for a slot (it ran no time, so counts no tick).
    pub fn take_resumed(&mut self) -> bool {
        std::mem::take(&mut self.resumed)
    }

    /// What the guest does at a tick: yield its thread, and once it is
    /// long-running, give its slot back and queue for one again, or give up
    /// queueing at the worker's `deadline` (the callback then stops it).
    pub fn tick(&mut self, deadline: Instant) -> UpdateDeadline {
        self.streak += 1;
        if self.streak < LONG_RUNNING_TICKS {
            // Ticks are wall-clock: a guest that waits for the thread after
            // yielding would otherwise meet its next deadline already passed
            // and count the ticks it spent waiting as its own, so that an
            // ordinary handler on a busy thread would turn long-running and
            // charge its project. The callback right after the yield counts
            // nothing and sets the next deadline from then.
            self.resumed = true;
            return UpdateDeadline::YieldCustom(0, Box::pin(tokio::task::yield_now()));
        }
        if let Some(project) = &self.project {
            self.slots.charge(project);
        }
        self.resumed = true;
        let (slots, slot) = (self.slots.slots.clone(), self.slot.clone());
        // A deadline of 0 more ticks calls the callback again as soon as the
        // guest resumes, which checks the worker's deadline at once.
        UpdateDeadline::YieldCustom(
            0,
            Box::pin(async move {
                drop(lock(&slot).take());
                take_slot(slots, &slot, deadline).await;
                // A free slot is granted at once: yield anyway, so that the
                // thread serves others between ticks.
                tokio::task::yield_now().await;
            }),
        )
    }

    /// The guest blocks in a host call: it computes briefly again from here,
    /// and its slot (if it held one) goes to the next in the queue.
    pub fn blocked(&mut self) {
        self.streak = 0;
        drop(lock(&self.slot).take());
    }
}

/// Queues for one of `slots` and keeps it in `slot`; gives up at
/// `deadline`, when the worker is stopped anyway.
async fn take_slot(
    slots: Arc<Semaphore>,
    slot: &Mutex<Option<OwnedSemaphorePermit>>,
    deadline: Instant,
) {
    let deadline = tokio::time::Instant::from_std(deadline);
    if let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
        *lock(slot) = Some(permit);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
