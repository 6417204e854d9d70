//! The WASI preview 1 functions a guest may import, and nothing more.
//!
//! The sandbox grants no files, no environment, no sockets and no arguments,
//! so instead of linking a full WASI implementation and then locking it down
//! (wasmtime's WASI file-system checks have been bypassed more than once),
//! the host provides these thirteen functions itself:
//!
//! | function | behaviour |
//! |---|---|
//! | `fd_write` | fds 1 and 2 become worker log lines (counted against the log limit); others `EBADF` |
//! | `fd_fdstat_get` | fds 1 and 2 are write-only character devices; others `EBADF` |
//! | `fd_read`, `fd_close`, `fd_seek` | `EBADF` / `ESPIPE` |
//! | `clock_time_get`, `clock_res_get` | realtime and monotonic clocks, rounded to the millisecond (no fine timers for side channels) |
//! | `random_get` | OS randomness |
//! | `environ_sizes_get`, `environ_get`, `args_sizes_get`, `args_get` | empty |
//! | `proc_exit` | ends the worker with that exit code |
//!
//! A module importing any other function fails to instantiate, with an error
//! naming the import. docs/host-api.md (section WASI) is the guest's view of
//! the same table.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Memory};

use crate::worker::{Stop, WorkerState};

/// The import module of WASI preview 1.
pub(crate) const MODULE: &str = "wasi_snapshot_preview1";

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_SPIPE: i32 = 70;

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
                bytes.extend_from_slice(data);
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
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, WorkerState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(Stop::Exit(code)))
        },
    )?;
    Ok(())
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

fn monotonic_now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn coarse(time: Duration) -> Duration {
    let step = CLOCK_RESOLUTION.as_nanos();
    Duration::from_nanos((time.as_nanos() / step * step) as u64)
}
