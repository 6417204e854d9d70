//! A single-threaded executor driven by the host's `wait_any`
//! (docs/host-api.md, "Tickets and `wait_any`").
//!
//! Operations that take time (a job's end, its logs, a timer) answer with a
//! ticket. A [`Ticket`] future registers its number in a table and is pending
//! until [`block_on`] hears from `wait_any` that the ticket completed, puts
//! the result in its slot and polls the root future again. Every future in
//! the tree (a handler, the jobs of a concurrent group) is polled in one pass,
//! so that all of them start their operations before the guest waits: that
//! is what lets one guest thread run jobs concurrently.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::host::{self, HostError, op};

/// A ticket's slot: still waited for, or its outcome.
enum Slot {
    Waiting,
    Done(std::result::Result<Value, HostError>),
}

thread_local! {
    /// The tickets the script still wants, by number.
    static TICKETS: RefCell<BTreeMap<u64, Slot>> = const { RefCell::new(BTreeMap::new()) };
}

/// Set when a future wakes the executor itself (a future of the script's own,
/// such as a channel), so that it polls again before it waits on the host.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts an operation that answers with a ticket, and returns the future of
/// its result.
pub(crate) fn submit(
    op: u32,
    request: &impl serde::Serialize,
) -> std::result::Result<Ticket, HostError> {
    #[derive(Deserialize)]
    struct Reply {
        ticket: u64,
    }
    let Reply { ticket } = host::call(op, request)?;
    TICKETS.with(|tickets| tickets.borrow_mut().insert(ticket, Slot::Waiting));
    Ok(Ticket {
        number: ticket,
        finished: false,
    })
}

/// The result of an operation the host completes later. Dropping it before it
/// completes forgets the ticket (`ticket.cancel`): a timer stops, a job goes
/// on without anyone waiting for it.
pub(crate) struct Ticket {
    number: u64,
    finished: bool,
}

impl Future for Ticket {
    type Output = std::result::Result<Value, HostError>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        let number = self.number;
        let outcome = TICKETS.with(|tickets| {
            let mut tickets = tickets.borrow_mut();
            match tickets.remove(&number) {
                Some(Slot::Done(outcome)) => Some(outcome),
                Some(Slot::Waiting) => {
                    tickets.insert(number, Slot::Waiting);
                    None
                }
                None => Some(Err(HostError::internal(format!(
                    "ticket {number} was polled after it completed"
                )))),
            }
        });
        match outcome {
            Some(outcome) => {
                self.finished = true;
                Poll::Ready(outcome)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let waiting = TICKETS.with(|tickets| tickets.borrow_mut().remove(&self.number));
        if let Some(Slot::Waiting) = waiting {
            #[derive(serde::Serialize)]
            struct Cancel {
                ticket: u64,
            }
            // A ticket that completed meanwhile is ignored by the host.
            let _ = host::call_unit(
                op::TICKET_CANCEL,
                &Cancel {
                    ticket: self.number,
                },
            );
        }
    }
}

/// Hands a completion from `wait_any` to its ticket's slot; a ticket nobody
/// wants any more is dropped.
fn deliver(number: u64, outcome: std::result::Result<Value, HostError>) {
    TICKETS.with(|tickets| {
        if let Some(slot) = tickets.borrow_mut().get_mut(&number) {
            *slot = Slot::Done(outcome);
        }
    });
}

#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum WaitAnyReply {
    Idle,
    Completed {
        ticket: u64,
        #[serde(default)]
        result: Value,
    },
    Failed {
        ticket: u64,
        error: HostError,
    },
}

/// Runs `future` to completion on this thread: polls it, and whenever it is
/// pending waits in the host's `wait_any` for the next ticket to complete.
///
/// [`Events::process`](crate::Events::process) runs handlers with it; a
/// script with its own `main` logic may call it directly. The `Err` case is
/// the executor's own failure: the host answered `idle` (nothing outstanding)
/// while the future still waited, which means it waits for something that
/// will never come, or `wait_any` itself failed.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    let mut future = pin!(future);
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        flag.0.store(false, Ordering::Relaxed);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Ok(output);
        }
        if flag.0.load(Ordering::Relaxed) {
            continue; // woken while polled: poll again before waiting
        }
        let reply = host::call_json(op::WAIT_ANY, "")
            .map_err(|e| Error::internal(format!("waiting for the host failed: {}", e.message)))?;
        let reply: WaitAnyReply = serde_json::from_str(&reply).map_err(|e| {
            Error::internal(format!(
                "the host's reply to wait_any could not be read: {e}"
            ))
        })?;
        match reply {
            WaitAnyReply::Idle => {
                let waiting = TICKETS.with(|tickets| tickets.borrow().len());
                return Err(Error::internal(format!(
                    "the script is still waiting, but the host has nothing outstanding for it \
                     (wait_any answered idle with {waiting} ticket(s) in the SDK's table): a \
                     future waits for something that will never happen"
                )));
            }
            WaitAnyReply::Completed { ticket, result } => deliver(ticket, Ok(result)),
            WaitAnyReply::Failed { ticket, error } => deliver(ticket, Err(error)),
        }
    }
}

type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs futures at the same time and collects their outputs in order.
pub fn join_all<'a, T: 'a>(
    futures: impl IntoIterator<Item = impl Future<Output = T> + 'a>,
) -> impl Future<Output = Vec<T>> + 'a {
    let mut futures: Vec<(LocalFuture<'a, T>, Option<T>)> = futures
        .into_iter()
        .map(|f| (Box::pin(f) as LocalFuture<'a, T>, None))
        .collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in &mut futures {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(
            futures
                .iter_mut()
                .map(|(_, output)| output.take().expect("every future is done"))
                .collect(),
        )
    })
}

/// Runs fallible futures at the same time: their outputs in order once all
/// succeed, or the first error (in the order they happen), at which point the
/// others are dropped (as `Promise.all` rejects at the first rejection).
pub fn try_join_all<'a, T: 'a, E: 'a>(
    futures: impl IntoIterator<Item = impl Future<Output = std::result::Result<T, E>> + 'a>,
) -> impl Future<Output = std::result::Result<Vec<T>, E>> + 'a {
    type Slot<'a, T, E> = (LocalFuture<'a, std::result::Result<T, E>>, Option<T>);
    let mut futures: Vec<Slot<'a, T, E>> = futures
        .into_iter()
        .map(|f| (Box::pin(f) as LocalFuture<'a, _>, None))
        .collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        let mut failed = None;
        for (future, output) in &mut futures {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(Ok(value)) => *output = Some(value),
                    // The others are still polled in this pass, so that
                    // each starts its operation (as `Promise.all` calls every
                    // `run()` before it can reject).
                    Poll::Ready(Err(error)) => {
                        failed.get_or_insert(error);
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if let Some(error) = failed {
            futures.clear(); // drops the others: their tickets are forgotten
            return Poll::Ready(Err(error));
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(Ok(futures
            .iter_mut()
            .map(|(_, output)| output.take().expect("every future is done"))
            .collect()))
    })
}
