//! Time and waiting: `sleep` (behind `setTimeout`), `ticket.cancel` and
//! `wait_any`, and the tickets every operation that completes later answers
//! with (a timer, a job's end, a job's logs).
//!
//! Each ticket runs as a task of its own and reports to a channel;
//! `wait_any` takes the next report for a ticket still wanted. That one
//! blocking call is what lets a guest's promises (or futures) run any
//! number of jobs and timers at once on its single thread.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use mizzen_host_api::types::{SleepRequest, Ticket, WaitAnyReply};
use mizzen_host_api::{ErrorCode, HostError, Op};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::host::{CallOutcome, parse, reply};
use crate::worker::{Stop, WorkerState};

/// The operations this capability answers.
pub const OPS: &[Op] = &[Op::Sleep, Op::TicketCancel, Op::WaitAny];

/// Timers and job waits one worker may have outstanding at once. A script
/// with more is leaking them; the cap bounds the host tasks one worker owns.
const MAX_OUTSTANDING_TICKETS: usize = 10_000;

/// Answers one of [`OPS`].
pub(crate) async fn call(state: &mut WorkerState, op: Op, request: &[u8]) -> CallOutcome {
    Ok(match op {
        Op::Sleep => parse::<SleepRequest>(op, request).and_then(|sleep| {
            let wall = state.limits.wall_time;
            let delay = if sleep.ms.is_finite() && sleep.ms > 0.0 {
                Duration::try_from_secs_f64(sleep.ms / 1000.0)
                    .unwrap_or(wall)
                    .min(wall)
            } else {
                Duration::ZERO
            };
            let ticket = state.tickets.sleep(delay)?;
            reply(&Ticket { ticket })
        }),
        Op::TicketCancel => parse::<Ticket>(op, request).map(|ticket| {
            state.tickets.cancel(ticket.ticket);
            None
        }),
        _ => {
            if let Some(cpu) = &mut state.cpu {
                cpu.blocked();
            }
            let deadline = tokio::time::Instant::from_std(state.deadline);
            let signal = state.stop_signal.clone();
            tokio::select! {
                next = tokio::time::timeout_at(deadline, state.tickets.wait_any()) => match next {
                    Ok(next) => reply(&next),
                    Err(_) => return Err(wasmtime::Error::new(Stop::WallTime)),
                },
                stop = signal.wait() => return Err(wasmtime::Error::new(stop)),
            }
        }
    })
}

/// Operations that complete later. The channel is made with the first
/// ticket: most workers never need one.
pub(crate) struct Tickets {
    next: u64,
    outstanding: HashMap<u64, AbortHandle>,
    channel: Option<TicketChannel>,
}

type TicketReport = (u64, Result<serde_json::Value, HostError>);

struct TicketChannel {
    sender: mpsc::UnboundedSender<TicketReport>,
    receiver: mpsc::UnboundedReceiver<TicketReport>,
}

impl Tickets {
    pub fn new() -> Self {
        Self {
            next: 1,
            outstanding: HashMap::new(),
            channel: None,
        }
    }

    /// Starts `operation` and returns its ticket.
    pub fn start<F>(&mut self, operation: F) -> Result<u64, HostError>
    where
        F: Future<Output = Result<serde_json::Value, HostError>> + Send + 'static,
    {
        if self.outstanding.len() >= MAX_OUTSTANDING_TICKETS {
            return Err(HostError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a worker may have at most {MAX_OUTSTANDING_TICKETS} timers and job waits outstanding"
                ),
            ));
        }
        let ticket = self.next;
        self.next += 1;
        let channel = self.channel.get_or_insert_with(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            TicketChannel { sender, receiver }
        });
        let sender = channel.sender.clone();
        let task = tokio::spawn(async move {
            let result = operation.await;
            let _ = sender.send((ticket, result));
        });
        self.outstanding.insert(ticket, task.abort_handle());
        Ok(ticket)
    }

    /// A ticket that sleeps for `delay`.
    pub fn sleep(&mut self, delay: Duration) -> Result<u64, HostError> {
        self.start(async move {
            tokio::time::sleep(delay).await;
            Ok(serde_json::Value::Null)
        })
    }

    /// Forgets a ticket; returns whether it was outstanding.
    pub fn cancel(&mut self, ticket: u64) -> bool {
        match self.outstanding.remove(&ticket) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Waits for the next outstanding ticket to complete.
    pub async fn wait_any(&mut self) -> WaitAnyReply {
        loop {
            let Some(channel) = self
                .channel
                .as_mut()
                .filter(|_| !self.outstanding.is_empty())
            else {
                return WaitAnyReply::Idle;
            };
            let Some((ticket, result)) = channel.receiver.recv().await else {
                return WaitAnyReply::Idle; // unreachable: the channel holds a sender
            };
            if self.outstanding.remove(&ticket).is_none() {
                continue; // cancelled while its result was on the way
            }
            return match result {
                Ok(result) => WaitAnyReply::Completed { ticket, result },
                Err(error) => WaitAnyReply::Failed { ticket, error },
            };
        }
    }
}

impl Drop for Tickets {
    fn drop(&mut self) {
        for task in self.outstanding.values() {
            task.abort();
        }
    }
}
