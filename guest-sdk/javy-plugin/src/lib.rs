//! Mizzen's Javy plugin: QuickJS, Brigade's script API and the host imports,
//! built for wasm32-wasip1.
//!
//! The host pre-initialises this module once with Wizer (`initialize-runtime`
//! evaluates `guest-sdk/js/brigadier.js`, so the whole library is part of the
//! snapshot), then gives every event a fresh instance of the snapshot:
//!
//! - `mizzen-compile(kind, buf, name_len, src_len) -> *const [u32; 3]` turns a
//!   script into QuickJS bytecode. `buf` holds the file name then the source;
//!   the result area holds a status (0 = ok), a pointer and a length (the
//!   bytecode, or the error message).
//! - `mizzen-run(kind, buf, name_len, bytecode_len) -> i32` runs the bytecode
//!   and drives the event loop until nothing is left to do: whenever the
//!   microtask queue is empty it blocks in the host's `wait_any` until one of
//!   its outstanding operations (a job, a timer) completes, resolves that
//!   promise and goes on. Returns 0 when the script succeeded, 1 when it
//!   failed (the error has been reported to the host).
//!
//! `kind` is 0 for a CommonJS script and 1 for an ES module. A CommonJS script
//! is compiled as a global script (sloppy mode allowed) and finds `require`,
//! `module`, `exports`, `__filename` and `__dirname` as globals, so that
//! positions in its errors are exactly those of the file. The standard Javy plugin exports
//! (`compile-src`, `invoke`, `cabi_realloc`) come from javy-plugin-api.

use std::cell::{OnceCell, RefCell};
use std::ffi::CString;

use javy_plugin_api::Config;
use javy_plugin_api::import_namespace;
use javy_plugin_api::javy::Runtime;
use javy_plugin_api::javy::quickjs::context::EvalOptions;
use javy_plugin_api::javy::quickjs::function::Func;
use javy_plugin_api::javy::quickjs::module::{Declarations, Exports, ModuleDef};
use javy_plugin_api::javy::quickjs::{
    self as qjs_rs, CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object,
    Persistent, Value, WriteOptions, qjs,
};

import_namespace!("mizzen_plugin_v1");

/// The Brigadier library, evaluated once during pre-initialisation.
const SDK_SOURCE: &str = include_str!("../../js/brigadier.js");
const SDK_FILE_NAME: &str = "mizzen:brigadier.js";

/// The module names scripts import the library under.
const MODULE_NAMES: [&str; 2] = ["@brigadecore/brigadier", "brigadier"];
/// What the ES module exports (the library's own names plus `default`).
/// (host-api/tests/op_codes.rs checks it against brigadier.js's object.)
const MODULE_EXPORTS: [&str; 14] = [
    "events",
    "EventRegistry",
    "Job",
    "Container",
    "Service",
    "JobHost",
    "SerialGroup",
    "ConcurrentGroup",
    "ImagePullPolicy",
    "logger",
    "Logger",
    "workspace",
    "artifacts",
    "setSummary",
];

const KIND_SCRIPT: u32 = 0;
const KIND_MODULE: u32 = 1;

/// Cyclic garbage is collected once the heap grows past this; below it,
/// reference counting alone frees memory, and short scripts never pay for a
/// collection.
const GC_THRESHOLD_BYTES: usize = 4 * 1024 * 1024;
/// QuickJS's own guard against deep JS recursion, well inside the 1 MiB stack
/// of the module, so that runaway recursion is a catchable RangeError.
const JS_STACK_BYTES: usize = 256 * 1024;

mod host {
    #[link(wasm_import_module = "mizzen:host/v1")]
    unsafe extern "C" {
        pub fn call(op: u32, request_ptr: *const u8, request_len: usize) -> i64;
        pub fn take_reply(buffer_ptr: *mut u8, buffer_len: usize) -> i32;
    }
}

/// The host's operation numbers: host-api's own file, compiled in here, so
/// that the plugin cannot disagree with the host.
#[allow(
    dead_code,
    reason = "the plugin calls two operations itself; brigadier.js has its own table"
)]
mod op {
    include!("../../../host-api/src/op_codes.rs");
}

/// Calls the host. `Ok` carries the reply, `Err` the error's JSON
/// (`{"code": ..., "message": ...}`, which names the error code).
fn host_call(op: u32, request: &[u8]) -> Result<String, String> {
    // SAFETY: the host reads `request_len` bytes at `request_ptr`, which
    // `request` owns for the duration of the call.
    let raw = unsafe { host::call(op, request.as_ptr(), request.len()) };
    let status = (raw >> 32) as u32;
    let len = raw as u32 as usize;
    let mut reply = vec![0u8; len];
    if len > 0 {
        // SAFETY: `reply` has room for exactly `len` bytes.
        let copied = unsafe { host::take_reply(reply.as_mut_ptr(), len) };
        if copied < 0 || copied as usize != len {
            return Err(
                r#"{"code":"internal","message":"the host reply could not be read"}"#.into(),
            );
        }
    }
    let reply = String::from_utf8(reply)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    if status == 0 { Ok(reply) } else { Err(reply) }
}

/// What the plugin keeps between initialisation and runs: the context and
/// what brigadier.js returned, its functions looked up once.
struct State {
    context: Context,
    /// The library's exports.
    brigadier: Persistent<Object<'static>>,
    /// `beginScript(name)`: called before each script.
    begin_script: Persistent<Function<'static>>,
    /// `complete(ticket, outcome)`: resolves a ticket's promise.
    complete: Persistent<Function<'static>>,
    /// `reportError(kind, value)`: reports an error to the host.
    report_error: Persistent<Function<'static>>,
    /// `waiting()`: whether any ticket is still wanted.
    waiting: Persistent<Function<'static>>,
    /// `exitCode()`: the script's `process.exitCode`.
    exit_code: Persistent<Function<'static>>,
}

/// A function of the library's internals, for this context.
fn hook<'js>(
    ctx: &Ctx<'js>,
    pick: impl FnOnce(&State) -> &Persistent<Function<'static>>,
) -> qjs_rs::Result<Function<'js>> {
    STATE.with(|state| {
        pick(state.get().expect("the plugin is initialised"))
            .clone()
            .restore(ctx)
    })
}

thread_local! {
    static STATE: OnceCell<State> = const { OnceCell::new() };
    /// Rejected promises nothing has handled yet, with their reasons.
    static UNHANDLED: RefCell<Vec<(Persistent<Value<'static>>, Persistent<Value<'static>>)>> =
        const { RefCell::new(Vec::new()) };
    /// Keeps the last compile result alive until the host has read it.
    static COMPILE_RESULT: RefCell<(Vec<u8>, [u32; 3])> = const { RefCell::new((Vec::new(), [0; 3])) };
}

fn config() -> Config {
    let mut config = Config::default();
    config
        .text_encoding(true)
        .gc_threshold(GC_THRESHOLD_BYTES)
        .max_stack_size(JS_STACK_BYTES);
    config
}

fn modify_runtime(runtime: Runtime) -> Runtime {
    let context = runtime.context().clone();
    let state = context
        .with(|ctx| -> qjs_rs::Result<State> {
            let host = Object::new(ctx.clone())?;
            host.set("call", Func::from(call_host))?;
            let mut options = EvalOptions::default();
            options.global = true;
            options.strict = false;
            options.filename = Some(SDK_FILE_NAME.into());
            let factory: Function = ctx.eval_with_options(SDK_SOURCE, options)?;
            let internals: Object = factory.call((host,))?;
            let function = |name: &str| -> qjs_rs::Result<Persistent<Function<'static>>> {
                Ok(Persistent::save(&ctx, internals.get::<_, Function>(name)?))
            };
            Ok(State {
                context: context.clone(),
                brigadier: Persistent::save(&ctx, internals.get::<_, Object>("brigadier")?),
                begin_script: function("beginScript")?,
                complete: function("complete")?,
                report_error: function("reportError")?,
                waiting: function("waiting")?,
                exit_code: function("exitCode")?,
            })
        })
        .unwrap_or_else(|e| panic!("the Brigadier library failed to initialise: {e}"));
    STATE.with(|cell| {
        let _ = cell.set(state);
    });
    context
        .with(|ctx| -> qjs_rs::Result<()> {
            for name in MODULE_NAMES {
                Module::declare_def::<BrigadierModule, _>(ctx.clone(), name)?.eval()?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("the Brigadier modules failed to initialise: {e}"));
    context
        .runtime()
        .set_host_promise_rejection_tracker(Some(Box::new(track_rejection)));
    // Collect what initialisation left behind, so that the snapshot's heap is
    // compact and each run's allocations land on fewer pages (every page a
    // run writes is copied back when its instance is recycled).
    context.runtime().run_gc();
    runtime
}

/// `host.call(op, request)` for brigadier.js: the reply's JSON becomes a
/// value without passing through a JS string first; `undefined` when there
/// is no reply.
fn call_host<'js>(ctx: Ctx<'js>, op: u32, request: String) -> qjs_rs::Result<Value<'js>> {
    match host_call(op, request.as_bytes()) {
        Ok(reply) if reply.is_empty() => Ok(Value::new_undefined(ctx)),
        Ok(reply) => ctx.json_parse(reply),
        Err(error) => Err(throw_host_error(&ctx, &error)),
    }
}

/// Throws the host's error JSON as a string; brigadier.js turns it into an
/// `Error` with a `code` property.
fn throw_host_error(ctx: &Ctx<'_>, error_json: &str) -> qjs_rs::Error {
    match qjs_rs::String::from_str(ctx.clone(), error_json) {
        Ok(text) => ctx.throw(text.into_value()),
        Err(e) => e,
    }
}

fn track_rejection<'js>(ctx: Ctx<'js>, promise: Value<'js>, reason: Value<'js>, is_handled: bool) {
    UNHANDLED.with(|unhandled| {
        let mut unhandled = unhandled.borrow_mut();
        if is_handled {
            unhandled.retain(|(p, _)| {
                p.clone()
                    .restore(&ctx)
                    .map(|p| p != promise)
                    .unwrap_or(true)
            });
        } else {
            unhandled.push((
                Persistent::save(&ctx, promise),
                Persistent::save(&ctx, reason),
            ));
        }
    });
}

/// The ES module `@brigadecore/brigadier` (and `brigadier`): the library's
/// exports, plus the whole library as `default`.
struct BrigadierModule;

impl ModuleDef for BrigadierModule {
    fn declare<'js>(declarations: &Declarations<'js>) -> qjs_rs::Result<()> {
        for name in MODULE_EXPORTS {
            declarations.declare(name)?;
        }
        declarations.declare("default")?;
        Ok(())
    }

    fn evaluate<'js>(ctx: &Ctx<'js>, exports: &Exports<'js>) -> qjs_rs::Result<()> {
        let brigadier = STATE.with(|state| {
            state
                .get()
                .expect("the plugin is initialised")
                .brigadier
                .clone()
                .restore(ctx)
        })?;
        for name in MODULE_EXPORTS {
            exports.export(name, brigadier.get::<_, Value>(name)?)?;
        }
        exports.export("default", brigadier)?;
        Ok(())
    }
}

fn context() -> Context {
    STATE.with(|state| {
        state
            .get()
            .expect("the plugin is initialised")
            .context
            .clone()
    })
}

#[unsafe(export_name = "initialize-runtime")]
pub extern "C" fn initialize_runtime() {
    javy_plugin_api::initialize_runtime(config, modify_runtime).unwrap_or_else(|e| panic!("{e}"));
}

/// Splits the host's buffer into the file name and the payload after it.
///
/// # Safety
/// `buf` must point to `name_len + rest_len` readable bytes.
unsafe fn split_buffer<'a>(
    buf: *const u8,
    name_len: usize,
    rest_len: usize,
) -> (&'a str, &'a [u8]) {
    // SAFETY: guaranteed by the caller.
    let all = unsafe { std::slice::from_raw_parts(buf, name_len + rest_len) };
    let (name, rest) = all.split_at(name_len);
    (std::str::from_utf8(name).unwrap_or("script"), rest)
}

#[unsafe(export_name = "mizzen-compile")]
pub unsafe extern "C" fn mizzen_compile(
    kind: u32,
    buf: *const u8,
    name_len: usize,
    src_len: usize,
) -> *const u32 {
    // SAFETY: the host wrote `name_len + src_len` bytes at `buf`.
    let (name, source) = unsafe { split_buffer(buf, name_len, src_len) };
    let source = String::from_utf8_lossy(source);
    let result = context().with(|ctx| compile(&ctx, kind, name, &source).map_err(describe_caught));
    COMPILE_RESULT.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (status, bytes) = match result {
            Ok(bytecode) => (0, bytecode),
            Err(message) => (1, message.into_bytes()),
        };
        cell.0 = bytes;
        cell.1 = [status, cell.0.as_ptr() as u32, cell.0.len() as u32];
        cell.1.as_ptr()
    })
}

fn compile<'js>(
    ctx: &Ctx<'js>,
    kind: u32,
    name: &str,
    source: &str,
) -> Result<Vec<u8>, CaughtError<'js>> {
    let options = WriteOptions {
        strip_source: true,
        ..WriteOptions::default()
    };
    if kind == KIND_MODULE {
        return Module::declare(ctx.clone(), name, source)
            .and_then(|module| module.write(options))
            .catch(ctx);
    }
    let input = CString::new(source).map_err(|_| nul_error(ctx))?;
    let file = CString::new(name).map_err(|_| nul_error(ctx))?;
    // SAFETY: `input` is NUL-terminated after `source.len()` bytes, as
    // JS_Eval requires; the returned value is freed below.
    unsafe {
        let raw = ctx.as_raw().as_ptr();
        let function = qjs::JS_Eval(
            raw,
            input.as_ptr(),
            source.len() as _,
            file.as_ptr(),
            (qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32,
        );
        if qjs::JS_IsException(function) {
            return Err(CaughtError::from_error(ctx, qjs_rs::Error::Exception));
        }
        let mut size = 0;
        let flags = qjs::JS_WRITE_OBJ_BYTECODE as i32 | qjs::JS_WRITE_OBJ_STRIP_SOURCE as i32;
        let bytes = qjs::JS_WriteObject(raw, &mut size, function, flags);
        qjs::JS_FreeValue(raw, function);
        if bytes.is_null() {
            return Err(CaughtError::from_error(ctx, qjs_rs::Error::Exception));
        }
        let bytecode = std::slice::from_raw_parts(bytes, size as usize).to_vec();
        qjs::js_free(raw, bytes.cast());
        Ok(bytecode)
    }
}

fn nul_error<'js>(ctx: &Ctx<'js>) -> CaughtError<'js> {
    CaughtError::from_error(
        ctx,
        qjs_rs::Error::new_from_js_message("source", "script", "the script contains a NUL byte"),
    )
}

/// `file:line:col: Name: message` for a compile error.
fn describe_caught(error: CaughtError<'_>) -> String {
    match error {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            let name: String = exception
                .as_object()
                .get::<_, Option<String>>("name")
                .ok()
                .flatten()
                .unwrap_or_else(|| "Error".into());
            let location = exception
                .stack()
                .and_then(|stack| stack.lines().find_map(stack_location))
                .unwrap_or_default();
            if location.is_empty() {
                format!("{name}: {message}")
            } else {
                format!("{location}: {name}: {message}")
            }
        }
        CaughtError::Value(value) => format!("non-error value thrown: {value:?}"),
        CaughtError::Error(error) => error.to_string(),
    }
}

/// `file:line:col` of a stack line such as `    at foo (brigade.js:3:5)`.
fn stack_location(line: &str) -> Option<String> {
    let line = line.trim().strip_prefix("at ")?;
    let inner = match (line.rfind('('), line.rfind(')')) {
        (Some(open), Some(close)) if open < close => &line[open + 1..close],
        _ => line,
    };
    (!inner.is_empty() && inner.contains(':')).then(|| inner.to_string())
}

#[unsafe(export_name = "mizzen-run")]
pub unsafe extern "C" fn mizzen_run(
    kind: u32,
    buf: *const u8,
    name_len: usize,
    bytecode_len: usize,
) -> i32 {
    // SAFETY: the host wrote `name_len + bytecode_len` bytes at `buf`.
    let (name, bytecode) = unsafe { split_buffer(buf, name_len, bytecode_len) };
    let failed = context().with(|ctx| run(&ctx, kind, name, bytecode));
    i32::from(failed)
}

/// Runs the script and its event loop. Returns true when the script failed.
fn run<'js>(ctx: &Ctx<'js>, kind: u32, name: &str, bytecode: &[u8]) -> bool {
    let begin = hook(ctx, |s| &s.begin_script).and_then(|f| f.call::<_, ()>((name,)));
    if let Err(caught) = begin.catch(ctx) {
        return report_caught(ctx, "uncaught", caught);
    }
    let main = match kind {
        KIND_MODULE => start_module(ctx, bytecode),
        KIND_SCRIPT => start_script(ctx, bytecode).map(|()| None),
        other => return report(ctx, "uncaught", &format!("unknown script kind {other}")),
    };
    let main = match main {
        Ok(main) => main,
        // Node ends the process on an exception at top level.
        Err(caught) => return report_caught(ctx, "uncaught", caught),
    };
    loop {
        if let Err(caught) = drain_jobs(ctx) {
            return report_caught(ctx, "uncaught", caught);
        }
        // Node (and so Brigade's worker) ends the process on a rejection
        // nothing handled once the microtasks have run: waiting on would keep
        // a failed worker running until its timers fire or its jobs end
        // (a handler that threw beside a 24 h timer stayed RUNNING for 24 h).
        // The host cancels whatever is still outstanding when the run ends.
        if report_unhandled_rejections(ctx) {
            return true;
        }
        let module_failure = main.as_ref().and_then(|promise| {
            let promise = promise.clone().restore(ctx).ok()?;
            promise.result::<Value>()?.catch(ctx).err()
        });
        if let Some(caught) = module_failure {
            return report_caught(ctx, "uncaught", caught);
        }
        // Every ticket the script still wants is in brigadier.js's table;
        // when it is empty, nothing will ever run again.
        let waiting = hook(ctx, |s| &s.waiting).and_then(|f| f.call::<_, bool>(()));
        if !waiting.unwrap_or(true) {
            break;
        }
        let reply = match host_call(op::WAIT_ANY, b"") {
            Ok(reply) => reply,
            Err(error) => {
                return report(
                    ctx,
                    "uncaught",
                    &format!("waiting for the host failed: {error}"),
                );
            }
        };
        let Some(ticket) = completed_ticket(&reply) else {
            break; // idle: the host has nothing outstanding either
        };
        let completed = hook(ctx, |s| &s.complete)
            .and_then(|f| f.call::<_, ()>((ticket, ctx.json_parse(reply)?)));
        if let Err(caught) = completed.catch(ctx) {
            return report_caught(ctx, "uncaught", caught);
        }
    }
    let exit_code: i32 = hook(ctx, |s| &s.exit_code)
        .and_then(|f| f.call(()))
        .unwrap_or(0);
    if exit_code != 0 {
        return report(
            ctx,
            "uncaught",
            &format!("the script set process.exitCode to {exit_code}"),
        );
    }
    false
}

/// The ticket of a `completed`/`failed` reply; `None` for `idle`.
fn completed_ticket(reply: &str) -> Option<f64> {
    let start = reply.find(r#""ticket":"#)? + r#""ticket":"#.len();
    let digits: String = reply[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Loads and evaluates an ES module; its evaluation promise settles when any
/// top-level await finishes.
fn start_module<'js>(
    ctx: &Ctx<'js>,
    bytecode: &[u8],
) -> Result<Option<Persistent<qjs_rs::Promise<'static>>>, CaughtError<'js>> {
    // SAFETY: the bytecode was produced by `mizzen-compile` of this same
    // plugin build (the host caches it by the plugin's hash).
    let module = unsafe { Module::load(ctx.clone(), bytecode) }.catch(ctx)?;
    let (_, promise) = module.eval().catch(ctx)?;
    Ok(Some(Persistent::save(ctx, promise)))
}

/// Runs a CommonJS script (compiled as a global script).
fn start_script<'js>(ctx: &Ctx<'js>, bytecode: &[u8]) -> Result<(), CaughtError<'js>> {
    // SAFETY: the bytecode was produced by `mizzen-compile` of this same
    // plugin build; JS_EvalFunction takes ownership of the object it is given.
    unsafe {
        let raw = ctx.as_raw().as_ptr();
        let object = qjs::JS_ReadObject(
            raw,
            bytecode.as_ptr(),
            bytecode.len() as _,
            qjs::JS_READ_OBJ_BYTECODE as i32,
        );
        if qjs::JS_IsException(object) {
            return Err(CaughtError::from_error(ctx, qjs_rs::Error::Exception));
        }
        let result = qjs::JS_EvalFunction(raw, object);
        if qjs::JS_IsException(result) {
            return Err(CaughtError::from_error(ctx, qjs_rs::Error::Exception));
        }
        qjs::JS_FreeValue(raw, result);
    }
    Ok(())
}

/// Runs every queued microtask.
fn drain_jobs<'js>(ctx: &Ctx<'js>) -> Result<(), CaughtError<'js>> {
    loop {
        let mut job_ctx = std::ptr::null_mut();
        // SAFETY: the runtime is this context's and is locked by `with`; the
        // returned context pointer is not used.
        let status = unsafe {
            qjs::JS_ExecutePendingJob(qjs::JS_GetRuntime(ctx.as_raw().as_ptr()), &mut job_ctx)
        };
        match status {
            0 => return Ok(()),
            // There is one context, so the job's exception is pending in `ctx`.
            s if s < 0 => return Err(CaughtError::from_error(ctx, qjs_rs::Error::Exception)),
            _ => continue,
        }
    }
}

/// Reports each rejection nothing handled; returns whether there was any.
fn report_unhandled_rejections(ctx: &Ctx<'_>) -> bool {
    let rejections = UNHANDLED.with(|unhandled| std::mem::take(&mut *unhandled.borrow_mut()));
    let any = !rejections.is_empty();
    for (_, reason) in rejections {
        if let Ok(reason) = reason.restore(ctx) {
            report_value(ctx, "unhandled_rejection", reason);
        }
    }
    any
}

fn report_caught<'js>(ctx: &Ctx<'js>, kind: &str, caught: CaughtError<'js>) -> bool {
    match caught {
        CaughtError::Exception(exception) => report_value(ctx, kind, exception.into_value()),
        CaughtError::Value(value) => report_value(ctx, kind, value),
        CaughtError::Error(error) => report(ctx, kind, &error.to_string()),
    }
}

/// Reports an error through brigadier.js, which formats it with its location.
fn report_value<'js>(ctx: &Ctx<'js>, kind: &str, value: Value<'js>) -> bool {
    let reported = hook(ctx, |s| &s.report_error).and_then(|f| f.call::<_, ()>((kind, value)));
    if let Err(e) = reported.catch(ctx) {
        report(ctx, kind, &e.to_string());
    }
    true
}

/// Reports an error from Rust, when JS cannot format it.
fn report(_ctx: &Ctx<'_>, kind: &str, message: &str) -> bool {
    let mut request = String::from(r#"{"kind":""#);
    request.push_str(kind);
    request.push_str(r#"","message":"#);
    push_json_string(&mut request, message);
    request.push('}');
    let _ = host_call(op::SCRIPT_ERROR, request.as_bytes());
    true
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
