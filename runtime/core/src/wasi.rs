//! The WASI preview 1 functions a guest may import, and nothing more.
//!
//! The sandbox grants no files, no environment, no sockets and no arguments,
//! so instead of linking a full WASI implementation and then locking it down
//! (wasmtime's WASI file-system checks have been bypassed more than once),
//! the host provides these eighteen functions itself:
//!
//! | function | behaviour |
//! |---|---|
//! | `fd_write` | fds 1 and 2 become worker log lines (counted against the log limit, at most 1 MiB per call); others `EBADF` |
//! | `fd_fdstat_get` | fds 1 and 2 are write-only character devices; others `EBADF` |
//! | `fd_read`, `fd_close`, `fd_seek` | `EBADF` / `ESPIPE` |
//! | `clock_time_get`, `clock_res_get` | realtime and monotonic clocks, rounded to the millisecond (no fine timers for side channels) |
//! | `random_get` | OS randomness |
//! | `environ_sizes_get`, `environ_get`, `args_sizes_get`, `args_get` | empty |
//! | `proc_exit` | ends the worker with that exit code |
//! | `sched_yield` | nothing to do: the host interleaves guests itself |
//! | `poll_oneoff` | clock subscriptions wait (as a blocking `wait_any` does: the worker's lifetime runs, its CPU time does not); fd subscriptions answer at once, `EBADF` but for fds 1 and 2 |
//! | `fd_fdstat_set_flags` | `ENOTSUP` for fds 1 and 2; others `EBADF` |
//! | `fd_prestat_get`, `fd_prestat_dir_name` | `EBADF`: there are no preopened directories |
//!
//! The last five are what Go's runtime imports (and C's and Zig's
//! libraries for `sleep` and file-less programs), so that a program in those
//! languages links without a line written for Mizzen.
//!
//! A module importing any other function fails to instantiate, with an error
//! naming the import. docs/host-api.md (section WASI) is the guest's view of
//! the same table.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Memory};

use crate::worker::{Stop, WorkerState};

/// The import module of WASI preview 1.
pub(crate) const MODULE: &str = "wasi_snapshot_preview1";

/// Every function of [`MODULE`] the host provides: what a compiled script
/// may import (checked by [`crate::module::check`]).
pub(crate) const FUNCTIONS: [&str; 18] = [
    "fd_write",
    "fd_fdstat_get",
    "fd_read",
    "fd_close",
    "fd_seek",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "proc_exit",
    "sched_yield",
    "poll_oneoff",
    "fd_fdstat_set_flags",
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOTSUP: i32 = 58;
const ERRNO_SPIPE: i32 = 70;

/// Bytes one `fd_write` takes; the rest is left unwritten (a short write, as
/// POSIX allows), so that a guest listing one iovec a million times does not
/// make the host gather gigabytes. Log lines are cut far below this anyway.
const MAX_WRITE_BYTES: usize = 1024 * 1024;

/// Subscriptions one `poll_oneoff` reads: a sleep is one clock, Go's
/// scheduler adds a few fds; the bound keeps what the host copies small.
const MAX_SUBSCRIPTIONS: u32 = 1024;

const CLOCK_REALTIME: i32 = 0;
const CLOCK_MONOTONIC: i32 = 1;
/// Clocks tick in whole milliseconds: enough for `Date.now()` and timeouts,
/// too coarse for timing attacks on the host.
const CLOCK_RESOLUTION: Duration = Duration::from_millis(1);

const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const RIGHT_FD_WRITE: u64 = 1 << 6;

/// `random_get` fills at most this many bytes per call; a guest asking for
/// more gets `EINVAL` rather than making the host allocate on its behalf.
const MAX_RANDOM_BYTES: u32 = 64 * 1024;

/// Adds the functions above to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, WorkerState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         nwritten: i32|
         -> wasmtime::Result<i32> {
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            let memory = memory(&mut caller)?;
            let mut bytes = Vec::new();
            for i in 0..iovs_len.max(0) as u32 {
                let Some(iov) = read_array::<8>(&memory, &caller, iovs as u32 + i * 8) else {
                    return Ok(ERRNO_FAULT);
                };
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Some(data) = memory
                    .data(&caller)
                    .get(ptr as usize..ptr as usize + len as usize)
                else {
                    return Ok(ERRNO_FAULT);
                };
                let room = MAX_WRITE_BYTES - bytes.len();
                bytes.extend_from_slice(&data[..data.len().min(room)]);
                if bytes.len() == MAX_WRITE_BYTES {
                    break;
                }
            }
            let written = bytes.len() as u32;
            caller.data_mut().write_output(fd == 2, &bytes)?;
            Ok(write_bytes(
                &memory,
                &mut caller,
                nwritten as u32,
                &written.to_le_bytes(),
            ))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut caller: Caller<'_, WorkerState>, buf: i32, len: i32| -> wasmtime::Result<i32> {
            let len = len as u32;
            if len > MAX_RANDOM_BYTES {
                return Ok(ERRNO_INVAL);
            }
            let mut bytes = vec![0u8; len as usize];
            if getrandom::fill(&mut bytes).is_err() {
                return Ok(ERRNO_INVAL);
            }
            let memory = memory(&mut caller)?;
            Ok(write_bytes(&memory, &mut caller, buf as u32, &bytes))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, WorkerState>,
         id: i32,
         _precision: i64,
         out: i32|
         -> wasmtime::Result<i32> {
            let now = match id {
                CLOCK_REALTIME => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
                CLOCK_MONOTONIC => monotonic_now(),
                _ => return Ok(ERRNO_INVAL),
            };
            let nanos = coarse(now).as_nanos() as u64;
            let memory = memory(&mut caller)?;
            Ok(write_bytes(
                &memory,
                &mut caller,
                out as u32,
                &nanos.to_le_bytes(),
            ))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut caller: Caller<'_, WorkerState>, id: i32, out: i32| -> wasmtime::Result<i32> {
            if id != CLOCK_REALTIME && id != CLOCK_MONOTONIC {
                return Ok(ERRNO_INVAL);
            }
            let memory = memory(&mut caller)?;
            let nanos = CLOCK_RESOLUTION.as_nanos() as u64;
            Ok(write_bytes(
                &memory,
                &mut caller,
                out as u32,
                &nanos.to_le_bytes(),
            ))
        },
    )?;
    for (sizes, get) in [
        ("environ_sizes_get", "environ_get"),
        ("args_sizes_get", "args_get"),
    ] {
        linker.func_wrap(
            MODULE,
            sizes,
            |mut caller: Caller<'_, WorkerState>, count: i32, size: i32| -> wasmtime::Result<i32> {
                let memory = memory(&mut caller)?;
                let a = write_bytes(&memory, &mut caller, count as u32, &0u32.to_le_bytes());
                let b = write_bytes(&memory, &mut caller, size as u32, &0u32.to_le_bytes());
                Ok(if a == ERRNO_SUCCESS { b } else { a })
            },
        )?;
        linker.func_wrap(MODULE, get, |_: i32, _: i32| -> i32 { ERRNO_SUCCESS })?;
    }
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |mut caller: Caller<'_, WorkerState>, fd: i32, out: i32| -> wasmtime::Result<i32> {
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            // struct fdstat { u8 filetype; u16 flags; u64 rights_base; u64 rights_inheriting; }
            let mut stat = [0u8; 24];
            stat[0] = FILETYPE_CHARACTER_DEVICE;
            stat[8..16].copy_from_slice(&RIGHT_FD_WRITE.to_le_bytes());
            let memory = memory(&mut caller)?;
            Ok(write_bytes(&memory, &mut caller, out as u32, &stat))
        },
    )?;
    linker.func_wrap(MODULE, "fd_close", |_: i32| -> i32 { ERRNO_BADF })?;
    linker.func_wrap(MODULE, "fd_seek", |_: i32, _: i64, _: i32, _: i32| -> i32 {
        ERRNO_SPIPE
    })?;
    linker.func_wrap(MODULE, "fd_read", |_: i32, _: i32, _: i32, _: i32| -> i32 {
        ERRNO_BADF
    })?;
    linker.func_wrap(MODULE, "sched_yield", || -> i32 { ERRNO_SUCCESS })?;
    linker.func_wrap(MODULE, "fd_fdstat_set_flags", |fd: i32, _: i32| -> i32 {
        if fd == 1 || fd == 2 {
            ERRNO_NOTSUP
        } else {
            ERRNO_BADF
        }
    })?;
    linker.func_wrap(MODULE, "fd_prestat_get", |_: i32, _: i32| -> i32 {
        ERRNO_BADF
    })?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: i32, _: i32, _: i32| -> i32 { ERRNO_BADF },
    )?;
    linker.func_wrap_async(
        MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, WorkerState>, (subs, events, n, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                poll_oneoff(
                    &mut caller,
                    subs as u32,
                    events as u32,
                    n as u32,
                    nevents as u32,
                )
                .await
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, WorkerState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(Stop::Exit(code)))
        },
    )?;
    Ok(())
}

/// `poll_oneoff`: waits for the earliest clock subscription (capped at the
/// worker's lifetime), or answers fd subscriptions at once.
async fn poll_oneoff(
    caller: &mut Caller<'_, WorkerState>,
    subs: u32,
    events: u32,
    n: u32,
    nevents: u32,
) -> wasmtime::Result<i32> {
    const SUBSCRIPTION: usize = 48;
    const EVENT: usize = 32;
    const CLOCK: u8 = 0;
    const FD_WRITE: u8 = 2;
    if n == 0 || n > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_INVAL);
    }
    let memory = memory(caller)?;
    let Some(table) = memory
        .data(&*caller)
        .get(subs as usize..subs as usize + n as usize * SUBSCRIPTION)
        .map(<[u8]>::to_vec)
    else {
        return Ok(ERRNO_FAULT);
    };
    let word = |at: usize| u64::from_le_bytes(table[at..at + 8].try_into().expect("8 bytes"));
    // (userdata, errno, type) of the events that fire, and the clocks' waits.
    let mut ready: Vec<(u64, u16, u8)> = Vec::new();
    let mut clocks: Vec<(u64, Duration)> = Vec::new();
    for i in 0..n as usize {
        let at = i * SUBSCRIPTION;
        let (userdata, tag) = (word(at), table[at + 8]);
        if tag != CLOCK {
            let fd = u32::from_le_bytes(table[at + 16..at + 20].try_into().expect("4 bytes"));
            let errno = if tag == FD_WRITE && (fd == 1 || fd == 2) {
                0
            } else {
                ERRNO_BADF as u16
            };
            ready.push((userdata, errno, tag));
            continue;
        }
        let id = u32::from_le_bytes(table[at + 16..at + 20].try_into().expect("4 bytes"));
        let (timeout, absolute) = (word(at + 24), table[at + 40] & 1 == 1);
        let now = match id as i32 {
            CLOCK_REALTIME => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            CLOCK_MONOTONIC => monotonic_now(),
            _ => {
                ready.push((userdata, ERRNO_INVAL as u16, CLOCK));
                continue;
            }
        };
        let wait = if absolute {
            Duration::from_nanos(timeout).saturating_sub(now)
        } else {
            Duration::from_nanos(timeout)
        };
        clocks.push((userdata, wait));
    }
    if ready.is_empty() {
        let wait = clocks
            .iter()
            .map(|(_, wait)| *wait)
            .min()
            .unwrap_or_default();
        let state = caller.data_mut();
        if let Some(cpu) = &mut state.cpu {
            cpu.blocked();
        }
        let wake = Instant::now()
            .checked_add(wait)
            .map_or(state.deadline, |wake| wake.min(state.deadline));
        let (signal, lifetime_ends) = (state.stop_signal.clone(), wake == state.deadline);
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            stop = signal.wait() => return Err(wasmtime::Error::new(stop)),
        }
        if lifetime_ends {
            return Err(wasmtime::Error::new(Stop::WallTime));
        }
        ready.extend(
            clocks
                .iter()
                .filter(|(_, w)| *w <= wait)
                .map(|(userdata, _)| (*userdata, 0, CLOCK)),
        );
    }
    let mut out = vec![0u8; ready.len() * EVENT];
    for (i, (userdata, errno, tag)) in ready.iter().enumerate() {
        let event = &mut out[i * EVENT..(i + 1) * EVENT];
        event[0..8].copy_from_slice(&userdata.to_le_bytes());
        event[8..10].copy_from_slice(&errno.to_le_bytes());
        event[10] = *tag;
    }
    let errno = write_bytes(&memory, caller, events, &out);
    if errno != ERRNO_SUCCESS {
        return Ok(errno);
    }
    Ok(write_bytes(
        &memory,
        caller,
        nevents,
        &(ready.len() as u32).to_le_bytes(),
    ))
}

/// The calling instance's exported memory.
pub(crate) fn memory(caller: &mut Caller<'_, WorkerState>) -> wasmtime::Result<Memory> {
    caller
        .get_export("memory")
        .and_then(|export| export.into_memory())
        .ok_or_else(|| wasmtime::Error::msg("the guest does not export its memory as \"memory\""))
}

fn read_array<const N: usize>(
    memory: &Memory,
    caller: &Caller<'_, WorkerState>,
    at: u32,
) -> Option<[u8; N]> {
    memory
        .data(caller)
        .get(at as usize..at as usize + N)
        .and_then(|bytes| bytes.try_into().ok())
}

fn write_bytes(
    memory: &Memory,
    caller: &mut Caller<'_, WorkerState>,
    at: u32,
    bytes: &[u8],
) -> i32 {
    match memory
        .data_mut(caller)
        .get_mut(at as usize..at as usize + bytes.len())
    {
        Some(target) => {
            target.copy_from_slice(bytes);
            ERRNO_SUCCESS
        }
        None => ERRNO_FAULT,
    }
}

/// The monotonic clock. Its origin is arbitrary (WASI says so): one second
/// before the process first reads it, so that it never reads zero, which
/// Go's runtime takes for a broken clock and refuses to start on.
fn monotonic_now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed() + Duration::from_secs(1)
}

fn coarse(time: Duration) -> Duration {
    let step = CLOCK_RESOLUTION.as_nanos();
    Duration::from_nanos((time.as_nanos() / step * step) as u64)
}

#[cfg(test)]
mod tests {
    use super::FUNCTIONS;

    /// docs/host-api.md's WASI table is the guest's view of [`FUNCTIONS`]:
    /// every function the host links is in it, and it names no other.
    #[test]
    fn the_guest_contract_lists_exactly_the_functions_linked() {
        let doc = include_str!("../../../docs/host-api.md");
        let section = &doc[doc.find("\n## WASI").expect("a WASI section")..];
        let section = &section[..section[1..]
            .find("\n## ")
            .map_or(section.len(), |end| end + 1)];
        let mut listed: Vec<&str> = section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .flat_map(|line| line.split('|').nth(1).unwrap_or_default().split(','))
            .filter_map(|cell| cell.trim().strip_prefix('`')?.split('(').next())
            .collect();
        listed.sort_unstable();
        let mut linked = FUNCTIONS.to_vec();
        linked.sort_unstable();
        assert_eq!(
            listed, linked,
            "docs/host-api.md's WASI table and wasi::FUNCTIONS differ"
        );
    }
}
