//! The sandbox: one wasmtime engine per process, the pre-initialised plugin,
//! the cache of compiled scripts (QuickJS bytecode, or a module's machine
//! code), and a fresh Store and instance for every event.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mizzen_host_api::types::{Event, ScriptErrorKind};
use wasmtime::{Engine, InstancePre, Linker, Memory, Store, Trap, UpdateDeadline};

use crate::capability::event::EventView;
use crate::capability::jobs::{HiddenSecrets, JobCapability, WorkerJobs};
use crate::capability::log::WorkerLog;
use crate::capability::secrets::ScriptSecrets;
use crate::capability::workspace::WorkspaceAccess;
use crate::capability::{HostedWorker, SandboxWorker, StopSignal, WorkerHost};
use crate::cpu::{CpuShare, CpuSlots};
use crate::executor::JobOutput;
use crate::limits::{EPOCH_TICK, WorkerLimits};
use crate::log::LogSink;
use crate::script::{self, Language, PositionMap, ScriptKey, ScriptKind, ScriptSource};
use crate::wasm_job::{JobLines, WasmJob, WasmJobRunner};
use crate::worker::{
    ComponentWasi, SandboxedWorker, Stop, WorkerFailure, WorkerOutcome, WorkerState,
};
use crate::{SandboxError, host, plugin, wasi};
use mizzen_host_api::types::{JobResult, Phase};

/// Limits of the instances that pre-initialise the plugin and compile
/// scripts: compilation is linear in the source (capped at
/// [`script::MAX_SCRIPT_BYTES`]) and takes well under a second, so these stop
/// only a pathological input.
pub(crate) const INITIALISATION_LIMITS: WorkerLimits = WorkerLimits {
    memory_bytes: crate::limits::DEFAULT_MEMORY_BYTES,
    cpu_time: Duration::from_secs(5),
    wall_time: Duration::from_secs(30),
    log_bytes: 0,
    log_lines: 0,
    request_bytes: crate::limits::DEFAULT_REQUEST_BYTES,
    summary_chars: 0,
    concurrent_jobs: 0,
    job_log_bytes: 0,
    workspace_bytes: 0,
    job_memory_bytes: 0,
    job_cpu_millis: 0,
    job_processes: 0,
    volume_bytes: 0,
    cache_bytes: 0,
    artifact_bytes: 0,
};

/// One compilation that concurrent events of a script share.
type Compiling = tokio::sync::OnceCell<Result<Arc<CompiledScript>, WorkerFailure>>;

/// Compiled scripts kept in memory: a thousand projects' current versions.
const SCRIPT_CACHE_ENTRIES: usize = 1024;

/// What the cached scripts may weigh together. Bytecode is tens of
/// kilobytes, but a compiled module's machine code is megabytes (Go's
/// runtime alone is ~6 MB of it), so the count alone would not bound memory.
const SCRIPT_CACHE_BYTES: usize = 512 * 1024 * 1024;

/// Memory a recycled slot keeps resident and resets by copying instead of
/// unmapping: the pre-initialised plugin's whole memory (1.4 MiB) fits, so a
/// worker never faults its pages in again; only the pages it wrote are
/// copied back. Beyond this, pages are handed back to the kernel.
const POOL_KEEP_RESIDENT_BYTES: usize = 8 * 1024 * 1024;

/// The table's resident part: the plugin's ~2,000 function references.
const POOL_TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// Instances alive at once in one sandbox by default: a server's workers
/// (each waiting on its jobs holds one) plus the compilations under way.
/// Each slot reserves 4 GiB of address space (guard pages instead of bounds
/// checks), so 1,000 slots reserve 4 TiB of the 128 TiB a process has.
pub const DEFAULT_MAX_INSTANCES: u32 = 1_000;

/// How a [`Sandbox`] is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where the compiled plugin is cached between processes; `None` compiles
    /// it in every process.
    pub cache_dir: Option<PathBuf>,
    /// How many instances (workers and compilations) may be alive at once.
    pub max_instances: u32,
    /// How many guests that compute for long stretches may run at once
    /// (see the `cpu` module); by default one fewer than the cores.
    pub long_running_slots: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: DEFAULT_MAX_INSTANCES,
            long_running_slots: crate::cpu::default_long_running_slots(),
        }
    }
}

impl SandboxConfig {
    /// The cache in `$MIZZEN_CACHE_DIR`, or else the user's cache directory
    /// (`~/.cache/mizzen` on Linux).
    pub fn from_env() -> Self {
        let cache_dir = std::env::var_os("MIZZEN_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|dir| dir.join("mizzen")));
        Self {
            cache_dir,
            ..Self::default()
        }
    }
}

/// One event for one worker.
pub struct WorkerRequest {
    /// The event, with the project's secrets.
    pub event: Event,
    /// The worker's limits.
    pub limits: WorkerLimits,
    /// Where the worker's log lines (and its jobs' output) go.
    pub log: Arc<dyn LogSink>,
    /// Whether, and on what, the worker's jobs run.
    pub jobs: JobCapability,
}

impl WorkerRequest {
    /// Splits the worker along the seam between its sandbox and its host:
    /// the event as its script may see it, the secrets it may read and its
    /// limits for the sandbox; its log, jobs (with every secret, for
    /// `${{ secrets.x }}` references) and workspace for the host.
    pub fn split(self) -> (SandboxWorker, HostedWorker) {
        let WorkerRequest {
            event,
            limits,
            log,
            jobs,
        } = self;
        let view = event.script_view();
        let event_json = serde_json::to_vec(&*view).expect("events serialise");
        let readable_secrets = view.project.secrets.clone();
        let hidden_secrets = event
            .project
            .secrets
            .keys()
            .filter(|key| !event.project.script_may_read(key))
            .cloned()
            .collect();
        let worker = SandboxWorker {
            event_json,
            project_id: event.project.id.clone(),
            readable_secrets,
            hidden_secrets,
            limits,
        };
        let project = Arc::new(event.project);
        let hidden = Arc::new(HiddenSecrets::new(project.clone()));
        let hosted = HostedWorker::new(
            WorkerLog::new(log.clone(), limits),
            WorkerJobs::new(
                jobs.clone(),
                log,
                event.worker.log_level,
                limits,
                project,
                hidden.clone(),
            ),
            WorkspaceAccess::new(jobs, limits.workspace_bytes, hidden),
        );
        (worker, hosted)
    }
}

/// A script ready to run: compiled to QuickJS bytecode by the plugin, or a
/// module compiled to machine code.
pub struct CompiledScript {
    name: String,
    code: CompiledCode,
}

enum CompiledCode {
    Bytecode {
        kind: ScriptKind,
        bytecode: Vec<u8>,
        positions: Option<PositionMap>,
    },
    /// A module linked with the host, ready to instantiate.
    Module(InstancePre<WorkerState>),
    /// A Wasm job's WASI preview 2 command component, linked with
    /// wasmtime-wasi's preview 2.
    Command {
        pre: wasmtime_wasi::p2::bindings::CommandPre<WorkerState>,
        /// The component's size, for the cache's weight.
        bytes: usize,
    },
}

impl std::fmt::Debug for CompiledScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledScript")
            .field("name", &self.name)
            .field("bytes", &self.weight())
            .finish()
    }
}

impl CompiledScript {
    /// Rewrites positions in the transpiled JavaScript to positions in the
    /// script's source (TypeScript); other scripts are returned unchanged.
    pub(crate) fn source_positions(&self, text: &str) -> String {
        match &self.code {
            CompiledCode::Bytecode {
                positions: Some(positions),
                ..
            } => positions.rewrite(&self.name, text),
            _ => text.to_string(),
        }
    }

    /// The size of the bytecode, in bytes (0 for a module).
    pub fn bytecode_len(&self) -> usize {
        match &self.code {
            CompiledCode::Bytecode { bytecode, .. } => bytecode.len(),
            CompiledCode::Module(_) | CompiledCode::Command { .. } => 0,
        }
    }

    /// What the script holds in memory: its bytecode, or its machine code.
    fn weight(&self) -> usize {
        match &self.code {
            CompiledCode::Bytecode { bytecode, .. } => bytecode.len(),
            CompiledCode::Module(pre) => {
                let image = pre.module().image_range();
                (image.end as usize).saturating_sub(image.start as usize)
            }
            // Machine code is a few times the component's size.
            CompiledCode::Command { bytes, .. } => bytes.saturating_mul(4),
        }
    }
}

/// Runs scripts, each event in a fresh instance. Create one per process and
/// share it: the engine, the compiled plugin and the bytecode cache are
/// shared by every worker; nothing of one worker's instance is.
pub struct Sandbox {
    engine: Engine,
    /// The host API and WASI, for modules given as scripts.
    linker: Linker<WorkerState>,
    /// wasmtime-wasi's WASI preview 1 and nothing else, for Wasm jobs.
    job_linker: Linker<WorkerState>,
    /// wasmtime-wasi's WASI preview 2 and nothing else, for Wasm jobs that
    /// are components.
    component_linker: wasmtime::component::Linker<WorkerState>,
    /// Where compiled modules (and the plugin) are kept between processes.
    cache_dir: Option<PathBuf>,
    /// Instances that run events.
    plugin: InstancePre<WorkerState>,
    /// Instances that compile scripts: the same plugin under a separate
    /// module, so that the pooling allocator keeps their memory slots apart
    /// from the workers' (a slot resets every page any earlier use wrote, and
    /// compiling writes many more pages than running).
    compiler: InstancePre<WorkerState>,
    scripts: Mutex<ScriptCache>,
    /// Compilations under way, by script key: events of a new script that
    /// arrive together wait for one compilation instead of each starting
    /// their own (a module's takes seconds of CPU).
    compiling: Mutex<HashMap<ScriptKey, Arc<Compiling>>>,
    /// Scripts prepared because the memory cache lacked them.
    compilations: AtomicU64,
    /// The long-running slots every guest's [`CpuShare`] queues for.
    long_running: Arc<CpuSlots>,
    /// Stops advancing the epoch when the sandbox is dropped.
    _ticker: EpochTicker,
}

impl Sandbox {
    /// Sets up the engine and the plugin (from the cache when it can).
    pub async fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let engine = new_engine(&config)?;
        let ticker = EpochTicker::start(engine.clone());
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(SandboxError::engine)?;
        host::add_to_linker(&mut linker).map_err(SandboxError::engine)?;
        let mut job_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut job_linker, job_wasi)
            .map_err(SandboxError::engine)?;
        let mut component_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)
            .map_err(SandboxError::engine)?;
        let module = plugin::load(
            &engine,
            &linker,
            |state| new_store(&engine, state),
            config.cache_dir.as_deref(),
        )
        .await?;
        let link = |module: &wasmtime::Module| {
            linker
                .instantiate_pre(module)
                .map_err(|e| SandboxError::plugin("the plugin does not link with the host", e))
        };
        let plugin = link(&module)?;
        let compiler = link(&plugin::duplicate(&engine, &module)?)?;
        Ok(Self {
            engine,
            linker,
            job_linker,
            component_linker,
            cache_dir: config.cache_dir,
            plugin,
            compiler,
            scripts: Mutex::new(ScriptCache::default()),
            compiling: Mutex::default(),
            compilations: AtomicU64::new(0),
            long_running: CpuSlots::new(config.long_running_slots),
            _ticker: ticker,
        })
    }

    /// Compiles a script to bytecode, or returns it from the cache. Errors
    /// name the file, line and column.
    pub async fn compile(
        &self,
        source: &ScriptSource,
    ) -> Result<Arc<CompiledScript>, WorkerFailure> {
        self.compile_once(source.key(), || async {
            match source.language() {
                Language::Wasm => {
                    self.compile_module(source.name(), source.code(), false)
                        .await
                }
                Language::JavaScript | Language::TypeScript => {
                    self.compile_javascript(source).await
                }
            }
        })
        .await
    }

    /// The compiled script cached under `key`, or what `prepare` makes of
    /// it: concurrent callers with one key wait for one preparation.
    async fn compile_once<F, Fut>(
        &self,
        key: ScriptKey,
        prepare: F,
    ) -> Result<Arc<CompiledScript>, WorkerFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CompiledScript, WorkerFailure>>,
    {
        if let Some(script) = self
            .scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(script);
        }
        let compiling = self
            .compiling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let compiled = compiling
            .get_or_init(|| async {
                self.compilations.fetch_add(1, Ordering::Relaxed);
                let script = prepare().await.map(Arc::new)?;
                self.scripts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, script.clone());
                Ok(script)
            })
            .await
            .clone();
        // The cache has it now (or it failed, and a later event tries
        // again); the last waiter's drop of `compiling` frees the cell.
        self.compiling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        compiled
    }

    /// How many scripts this sandbox has prepared because its memory cache
    /// lacked them (a module may still come from the cache directory): what
    /// concurrent events of one new script cost.
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Checks a module ([`crate::module::check`], or `check_job` for a
    /// job's), then compiles it on a blocking thread (it may take seconds)
    /// or loads it from the cache directory, and links it with the host (or
    /// with WASI alone, for a job).
    async fn compile_module(
        &self,
        name: &str,
        code: &Arc<[u8]>,
        job: bool,
    ) -> Result<CompiledScript, WorkerFailure> {
        let failure = |message: String| WorkerFailure::Script { message };
        if job {
            crate::module::check_job(name, code)
        } else {
            crate::module::check(name, code)
        }
        .map_err(|p| failure(p.to_string()))?;
        if job && wasmparser::Parser::is_component(code) {
            return self.compile_command(name, code).await;
        }
        let (engine, bytes) = (self.engine.clone(), code.clone());
        let cache_dir = self.cache_dir.clone();
        let module = tokio::task::spawn_blocking(move || {
            plugin::compile_cached(&engine, &bytes, cache_dir.as_deref())
        })
        .await
        .map_err(|e| failure(format!("{name}: compiling the module failed: {e}")))?
        .map_err(|e| failure(format!("{name}: compiling the module failed: {e:#}")))?;
        let linker = if job { &self.job_linker } else { &self.linker };
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| failure(format!("{name}: {e:#}")))?;
        Ok(CompiledScript {
            name: name.to_string(),
            code: CompiledCode::Module(pre),
        })
    }

    /// Compiles a job's command component on a blocking thread and links it
    /// with WASI preview 2. (Not cached on disk: a component's artifact
    /// would need checks of its own; it compiles once per process.)
    async fn compile_command(
        &self,
        name: &str,
        code: &Arc<[u8]>,
    ) -> Result<CompiledScript, WorkerFailure> {
        let failure = |message: String| WorkerFailure::Script { message };
        let (engine, bytes) = (self.engine.clone(), code.clone());
        let component = tokio::task::spawn_blocking(move || {
            wasmtime::component::Component::new(&engine, &bytes)
        })
        .await
        .map_err(|e| failure(format!("{name}: compiling the component failed: {e}")))?
        .map_err(|e| failure(format!("{name}: compiling the component failed: {e:#}")))?;
        let pre = self
            .component_linker
            .instantiate_pre(&component)
            .map_err(|e| failure(format!("{name}: {e:#}")))?;
        let pre = wasmtime_wasi::p2::bindings::CommandPre::new(pre).map_err(|e| {
            failure(format!(
                "{name}: not a WASI command component (it must export wasi:cli/run): {e:#}"
            ))
        })?;
        Ok(CompiledScript {
            name: name.to_string(),
            code: CompiledCode::Command {
                pre,
                bytes: code.len(),
            },
        })
    }

    /// Turns JavaScript or TypeScript into bytecode in the plugin.
    async fn compile_javascript(
        &self,
        source: &ScriptSource,
    ) -> Result<CompiledScript, WorkerFailure> {
        let prepared = script::prepare(source).map_err(|problem| WorkerFailure::Script {
            message: problem.to_string(),
        })?;
        // Compiled before, by this process or another (every sandbox process
        // of a server, and the next run, share the cache directory).
        let cache_dir = self.cache_dir.as_deref();
        if let Some(bytecode) = plugin::cached_bytecode(cache_dir, &source.key()) {
            return Ok(CompiledScript {
                name: prepared.name,
                code: CompiledCode::Bytecode {
                    kind: prepared.kind,
                    bytecode,
                    positions: prepared.positions,
                },
            });
        }
        let mut store = self.store(
            WorkerState::new(INITIALISATION_LIMITS, None, Arc::default()),
            None,
        );
        let compiled = self
            .call_plugin::<u32>(
                &self.compiler,
                &mut store,
                "mizzen-compile",
                prepared.kind as u32,
                &prepared.name,
                prepared.javascript.as_bytes(),
            )
            .await;
        let (memory, area) = match compiled {
            Err(error) => return Err(classify(error, store.data())),
            Ok(result) => result,
        };
        let read = |at: u32, len: usize| -> Option<Vec<u8>> {
            memory
                .data(&store)
                .get(at as usize..at as usize + len)
                .map(<[u8]>::to_vec)
        };
        let header = read(area, 12).ok_or_else(|| WorkerFailure::Trap {
            message: "the plugin returned a compile result outside its memory".into(),
        })?;
        let word =
            |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let (status, at, len) = (word(0), word(1), word(2));
        let bytes = read(at, len as usize).ok_or_else(|| WorkerFailure::Trap {
            message: "the plugin returned compile output outside its memory".into(),
        })?;
        if status != 0 {
            let message = String::from_utf8_lossy(&bytes).into_owned();
            let message = match &prepared.positions {
                Some(positions) => positions.rewrite(&prepared.name, &message),
                None => message,
            };
            return Err(WorkerFailure::Script { message });
        }
        plugin::keep_bytecode(cache_dir, &source.key(), &bytes);
        Ok(CompiledScript {
            name: prepared.name,
            code: CompiledCode::Bytecode {
                kind: prepared.kind,
                bytecode: bytes,
                positions: prepared.positions,
            },
        })
    }

    /// Runs one event's worker to the end, in this process, and says how it
    /// ended. Whatever way it ends, its jobs are stopped and everything the
    /// executor made for the event is removed (or handed to the executor's
    /// background clean-up) before this returns.
    pub async fn run(&self, script: &ScriptSource, request: WorkerRequest) -> WorkerOutcome {
        let (worker, hosted) = request.split();
        let hosted = Arc::new(hosted);
        hosted.begin();
        let outcome = self
            .run_sandboxed(script, worker, hosted.clone(), Arc::default())
            .await;
        let outcome = hosted.ended(outcome);
        hosted.finish().await;
        outcome
    }

    /// [`Sandbox::run`] with an already compiled script.
    pub async fn run_compiled(
        &self,
        script: &Arc<CompiledScript>,
        request: WorkerRequest,
    ) -> WorkerOutcome {
        let (worker, hosted) = request.split();
        let hosted = Arc::new(hosted);
        hosted.begin();
        let outcome = self
            .run_worker(script, worker, hosted.clone(), Arc::default())
            .await;
        let outcome = hosted.ended(outcome);
        hosted.finish().await;
        outcome
    }

    /// The sandbox's side of a worker: compiles (or finds) its script and
    /// runs it, reaching the capabilities it does not hold through `host`.
    /// A sandbox process calls this for each worker its parent gives it.
    pub async fn run_sandboxed(
        &self,
        script: &ScriptSource,
        worker: SandboxWorker,
        host: Arc<dyn WorkerHost>,
        stop: Arc<StopSignal>,
    ) -> WorkerOutcome {
        match self.compile(script).await {
            Ok(script) => self.run_worker(&script, worker, host, stop).await,
            Err(failure) => WorkerOutcome::failed(failure),
        }
    }

    /// Runs a compiled script for `worker` in a fresh Store and instance.
    async fn run_worker(
        &self,
        script: &Arc<CompiledScript>,
        worker: SandboxWorker,
        host: Arc<dyn WorkerHost>,
        stop: Arc<StopSignal>,
    ) -> WorkerOutcome {
        let SandboxWorker {
            event_json,
            project_id,
            readable_secrets,
            hidden_secrets,
            limits,
        } = worker;
        let sandboxed = SandboxedWorker {
            event: EventView::new(event_json),
            secrets: ScriptSecrets::new(project_id.clone(), readable_secrets, hidden_secrets),
            script: script.clone(),
            host,
        };
        let mut store = self.store(
            WorkerState::new(limits, Some(sandboxed), stop),
            Some(project_id),
        );
        // A guest of a project whose guests ran long lately waits for a
        // long-running slot before it runs at all (see `crate::cpu`).
        let deadline = store.data().deadline;
        if let Some(cpu) = store.data_mut().cpu.as_mut() {
            cpu.start(deadline).await;
        }
        let run = match &script.code {
            CompiledCode::Bytecode { kind, bytecode, .. } => self
                .call_plugin::<i32>(
                    &self.plugin,
                    &mut store,
                    "mizzen-run",
                    *kind as u32,
                    &script.name,
                    bytecode,
                )
                .await
                .map(drop),
            CompiledCode::Module(pre) => run_command(pre, &mut store).await,
            CompiledCode::Command { .. } => unreachable!("a script's key is never a job's"),
        };
        store.data_mut().flush_output();
        let state = store.data();
        match run {
            Err(error) => match error.downcast_ref::<Stop>() {
                Some(Stop::Exit(code)) => exit_outcome(*code, state),
                _ => WorkerOutcome::failed(classify(error, state)),
            },
            Ok(_) => exit_outcome(0, state),
        }
    }

    /// A store with the worker's limits: memory through the resource
    /// limiter, CPU through epoch ticks (yielding to other tasks each tick),
    /// its project charged for the CPU it takes.
    fn store(&self, mut state: WorkerState, project: Option<String>) -> Store<WorkerState> {
        state.cpu = Some(CpuShare::new(self.long_running.clone(), project));
        new_store(&self.engine, state)
    }

    /// Instantiates the plugin in `store`, copies `name` and `payload` into
    /// its memory and calls `export(kind, buffer, name_len, payload_len)`.
    async fn call_plugin<R: wasmtime::WasmResults + Send + Sync>(
        &self,
        plugin: &InstancePre<WorkerState>,
        store: &mut Store<WorkerState>,
        export: &str,
        kind: u32,
        name: &str,
        payload: &[u8],
    ) -> wasmtime::Result<(Memory, R)> {
        let instance = plugin.instantiate_async(&mut *store).await?;
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("the plugin exports no memory"))?;
        let realloc =
            instance.get_typed_func::<(u32, u32, u32, u32), u32>(&mut *store, "cabi_realloc")?;
        let len = u32::try_from(name.len() + payload.len())
            .map_err(|_| wasmtime::Error::msg("the script is too large for the sandbox"))?;
        let buffer = realloc.call_async(&mut *store, (0, 0, 1, len)).await?;
        memory.write(&mut *store, buffer as usize, name.as_bytes())?;
        memory.write(&mut *store, buffer as usize + name.len(), payload)?;
        let function = instance.get_typed_func::<(u32, u32, u32, u32), R>(&mut *store, export)?;
        let result = function
            .call_async(
                &mut *store,
                (kind, buffer, name.len() as u32, payload.len() as u32),
            )
            .await?;
        Ok((memory, result))
    }
}

/// The WASI context of a job's Store (every Store the job linker serves
/// has one).
fn job_wasi(state: &mut WorkerState) -> &mut wasmtime_wasi::p1::WasiP1Ctx {
    state
        .wasi
        .as_deref_mut()
        .expect("a Wasm job's Store holds its WASI context")
}

#[async_trait::async_trait]
impl WasmJobRunner for Sandbox {
    /// Runs a Wasm job in a fresh instance of its module: its memory held
    /// by the resource limiter, its CPU by epoch ticks under the same
    /// long-running slots and tenant charging as scripts, its timeout by
    /// the deadline (checked at every tick and while it waits in WASI).
    async fn run_job(
        &self,
        job: WasmJob,
        output: Arc<dyn JobOutput>,
        mut cancel: tokio::sync::watch::Receiver<bool>,
    ) -> JobResult {
        let name = format!("job \"{}\"", job.name);
        let key: ScriptKey = {
            use sha2::Digest;
            sha2::Sha256::new()
                .chain_update(b"wasm-job\0")
                .chain_update(job.sha256)
                .finalize()
                .into()
        };
        let code = job.module.clone();
        let compiled = self
            .compile_once(key, || self.compile_module(&job.module_name, &code, true))
            .await;
        let compiled = match compiled {
            Ok(compiled) => compiled,
            Err(failure) => {
                return JobResult::ended(Phase::Failed, None, format!("{name}: {failure}"));
            }
        };
        let (stdout, stderr) = (
            JobLines::new(output.clone(), &job.name),
            JobLines::new(output, &job.name),
        );
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        // No network: a component's sockets are refused as a module has none
        // (these are wasmtime-wasi's defaults, said here so they stay so).
        wasi.args(&job.args)
            .envs(&job.env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for dir in &job.preopens {
            if let Err(e) =
                wasi.preopened_dir(&dir.host, &dir.guest, wasmtime_wasi::FsPerms::ReadWrite)
            {
                return JobResult::ended(
                    Phase::Failed,
                    None,
                    format!(
                        "{name}: cannot open {} for {}: {e:#}",
                        dir.host.display(),
                        dir.guest
                    ),
                );
            }
        }
        let limits = WorkerLimits {
            memory_bytes: job.memory_bytes,
            cpu_time: job.cpu_time,
            wall_time: job.timeout,
            ..INITIALISATION_LIMITS
        };
        let mut state = WorkerState::new(limits, None, Arc::default());
        match &compiled.code {
            CompiledCode::Command { .. } => {
                state.component_wasi = Some(Box::new(ComponentWasi {
                    ctx: wasi.build(),
                    table: wasmtime::component::ResourceTable::new(),
                }));
            }
            _ => state.wasi = Some(Box::new(wasi.build_p1())),
        }
        let mut store = self.store(state, Some(job.project_id));
        let deadline = store.data().deadline;
        let ran = tokio::select! {
            ran = async {
                if let Some(cpu) = store.data_mut().cpu.as_mut() {
                    cpu.start(deadline).await;
                }
                match &compiled.code {
                    CompiledCode::Module(pre) => run_command(pre, &mut store).await,
                    CompiledCode::Command { pre, .. } => run_component(pre, &mut store).await,
                    CompiledCode::Bytecode { .. } => unreachable!("a job's key is never a script's"),
                }
            } => Some(ran),
            // A guest blocked in WASI (a sleep) sees no tick; these stop it
            // there too.
            _ = cancel.wait_for(|cancelled| *cancelled) => None,
            _ = tokio::time::sleep_until(deadline.into()) => Some(Err(wasmtime::Error::new(Stop::WallTime))),
        };
        stdout.finish();
        stderr.finish();
        let Some(ran) = ran else {
            return JobResult::ended(Phase::Aborted, None, format!("{name} was cancelled"));
        };
        job_result(&name, ran, store.data())
    }
}

/// Runs a command component's `wasi:cli/run` in a fresh instance. Its
/// `run` answers only success or failure: a failure is exit code 1 (as
/// wasmtime's own CLI reports it), unless the guest exited with its own.
async fn run_component(
    pre: &wasmtime_wasi::p2::bindings::CommandPre<WorkerState>,
    store: &mut Store<WorkerState>,
) -> wasmtime::Result<()> {
    let command = pre.instantiate_async(&mut *store).await?;
    match command.wasi_cli_run().call_run(&mut *store).await? {
        Ok(()) => Ok(()),
        Err(()) => Err(wasmtime::Error::new(wasmtime_wasi::I32Exit(1))),
    }
}

/// How a Wasm job ended: its exit code (`proc_exit`, or 0 when `_start`
/// returned), or the limit or trap that stopped it.
fn job_result(name: &str, ran: wasmtime::Result<()>, state: &WorkerState) -> JobResult {
    let error = match ran {
        Ok(()) => {
            return JobResult {
                phase: Phase::Succeeded,
                exit_code: Some(0),
                reason: None,
            };
        }
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        let code = i64::from(exit.0);
        return if code == 0 {
            JobResult {
                phase: Phase::Succeeded,
                exit_code: Some(0),
                reason: None,
            }
        } else {
            JobResult::ended(
                Phase::Failed,
                Some(code),
                format!("{name} exited with code {code}"),
            )
        };
    }
    let limits = &state.limits;
    match classify(error, state) {
        WorkerFailure::WallTime { .. } => JobResult::ended(
            Phase::TimedOut,
            None,
            format!(
                "{name} timed out after {} (timeoutSeconds)",
                humantime::format_duration(limits.wall_time)
            ),
        ),
        WorkerFailure::Memory { limit } => JobResult::ended(
            Phase::Failed,
            None,
            format!(
                "{name}: memory limit exceeded: the module asked for more than {} ({})",
                crate::worker::human_bytes(limit),
                crate::limits::Limit::JobMemory.project_field()
            ),
        ),
        WorkerFailure::CpuTime { limit } => JobResult::ended(
            Phase::Failed,
            None,
            format!(
                "{name}: CPU time limit exceeded: it computed for {} ({})",
                humantime::format_duration(limit),
                crate::limits::Limit::CpuTime.project_field()
            ),
        ),
        failure => JobResult::ended(Phase::Failed, None, format!("{name}: {failure}")),
    }
}

/// Runs a module's `_start` in a fresh instance: one event, from its start
/// function (if it has one) to the end of `main`.
async fn run_command(
    pre: &InstancePre<WorkerState>,
    store: &mut Store<WorkerState>,
) -> wasmtime::Result<()> {
    let instance = pre.instantiate_async(&mut *store).await?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(|e| e.context("the module's _start must take and return nothing"))?;
    start.call_async(&mut *store, ()).await
}

fn new_engine(config: &SandboxConfig) -> Result<Engine, SandboxError> {
    let mut engine = wasmtime::Config::new();
    engine
        .epoch_interruption(true)
        .strategy(wasmtime::Strategy::Cranelift)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Instances come from a pool of pre-reserved slots: creating and
    // dropping one then costs no mmap or munmap, and a recycled slot keeps
    // its pages resident and restores only those the last worker wrote (the
    // kernel's PAGEMAP_SCAN finds them). This is what makes a fresh instance
    // per event cost microseconds.
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_core_instances(config.max_instances)
        .total_memories(config.max_instances)
        .total_tables(config.max_instances)
        .total_stacks(config.max_instances)
        .table_elements(crate::worker::MAX_TABLE_ELEMENTS)
        .linear_memory_keep_resident(POOL_KEEP_RESIDENT_BYTES)
        .table_keep_resident(POOL_TABLE_KEEP_RESIDENT_BYTES)
        .pagemap_scan(wasmtime::Enabled::Auto);
    engine.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&engine).map_err(SandboxError::engine)
}

fn new_store(engine: &Engine, state: WorkerState) -> Store<WorkerState> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| state);
    store.epoch_deadline_callback(|mut context| {
        let state = context.data_mut();
        let resumed = state.cpu.as_mut().is_some_and(CpuShare::take_resumed);
        if !resumed {
            state.cpu_ticks += 1;
            if state.cpu_ticks > state.limits.cpu_ticks() {
                return Err(wasmtime::Error::new(Stop::CpuLimit));
            }
        }
        if Instant::now() >= state.deadline {
            return Err(wasmtime::Error::new(Stop::WallTime));
        }
        if let Some(stop) = state.stop_signal.raised() {
            return Err(wasmtime::Error::new(stop));
        }
        let deadline = state.deadline;
        Ok(match (&mut state.cpu, resumed) {
            (_, true) => UpdateDeadline::Continue(1),
            (Some(cpu), false) => cpu.tick(deadline),
            (None, false) => UpdateDeadline::Yield(1),
        })
    });
    store.set_epoch_deadline(1);
    store
}

/// The outcome of a run that ended on its own (or by `process.exit(code)`).
fn exit_outcome(code: i32, state: &WorkerState) -> WorkerOutcome {
    if let Some(error) = state.outcome.errors.first() {
        return WorkerOutcome::failed(WorkerFailure::Uncaught {
            message: error.message.clone(),
            kind: error.kind,
        });
    }
    if code != 0 {
        return WorkerOutcome::failed(WorkerFailure::Exit { code });
    }
    WorkerOutcome {
        phase: Phase::Succeeded,
        summary: state.outcome.summary.clone(),
        failure: None,
    }
}

/// Names the reason execution stopped.
fn classify(error: wasmtime::Error, state: &WorkerState) -> WorkerFailure {
    let limits = &state.limits;
    match error.downcast_ref::<Stop>() {
        Some(Stop::CpuLimit) => {
            return WorkerFailure::CpuTime {
                limit: limits.cpu_time,
            };
        }
        Some(Stop::MemoryLimit) => {
            return WorkerFailure::Memory {
                limit: limits.memory_bytes,
            };
        }
        Some(Stop::LogLimit) => {
            return WorkerFailure::Log {
                limit: limits.log_bytes,
            };
        }
        Some(Stop::LogLines) => {
            return WorkerFailure::LogLines {
                limit: limits.log_lines,
            };
        }
        Some(Stop::WallTime) => {
            return WorkerFailure::WallTime {
                limit: limits.wall_time,
            };
        }
        Some(Stop::Exit(code)) => return WorkerFailure::Exit { code: *code },
        None => {}
    }
    // QuickJS turns a failed allocation into an exception or an abort; the
    // limiter saw the attempt either way.
    if state.memory_limit_hit {
        return WorkerFailure::Memory {
            limit: limits.memory_bytes,
        };
    }
    if let Some(first) = state.outcome.errors.first() {
        return WorkerFailure::Uncaught {
            message: first.message.clone(),
            kind: ScriptErrorKind::Uncaught,
        };
    }
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return WorkerFailure::Capacity {
            message: format!("{error:#}"),
        };
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    WorkerFailure::Trap { message }
}

/// Compiled scripts by the hash of their language, name and text; the oldest
/// is dropped when the cache is full.
#[derive(Default)]
struct ScriptCache {
    scripts: HashMap<[u8; 32], Arc<CompiledScript>>,
    order: VecDeque<[u8; 32]>,
    /// What the scripts weigh together ([`CompiledScript::weight`]).
    bytes: usize,
}

impl ScriptCache {
    fn get(&self, key: &[u8; 32]) -> Option<Arc<CompiledScript>> {
        self.scripts.get(key).cloned()
    }

    fn insert(&mut self, key: [u8; 32], script: Arc<CompiledScript>) {
        self.bytes += script.weight();
        match self.scripts.insert(key, script) {
            Some(old) => self.bytes -= old.weight(),
            None => self.order.push_back(key),
        }
        while self.order.len() > SCRIPT_CACHE_ENTRIES
            || (self.bytes > SCRIPT_CACHE_BYTES && self.order.len() > 1)
        {
            if let Some(oldest) = self.order.pop_front()
                && let Some(old) = self.scripts.remove(&oldest)
            {
                self.bytes -= old.weight();
            }
        }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("mizzen-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("the epoch thread starts");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::log::MemoryLog;

    const CANARY: &str = "canary-of-tenant-a-5f3c9a1e7d";

    async fn sandbox() -> Sandbox {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mizzen-unit-cache");
        Sandbox::new(SandboxConfig {
            cache_dir: Some(cache),
            // Few slots, so that the next instance takes the one just freed.
            max_instances: 2,
            ..SandboxConfig::default()
        })
        .await
        .expect("the sandbox starts")
    }

    /// The whole linear memory of a fresh worker instance, as a worker
    /// would start with it, after writing `write` near its end.
    async fn fresh_memory(sandbox: &Sandbox, write: Option<&[u8]>) -> Vec<u8> {
        let mut store = sandbox.store(
            WorkerState::new(WorkerLimits::default(), None, Arc::default()),
            None,
        );
        let instance = sandbox.plugin.instantiate_async(&mut store).await.unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        if let Some(bytes) = write {
            let at = memory.data_size(&store) - bytes.len() - 4096;
            memory.write(&mut store, at, bytes).unwrap();
        }
        memory.data(&store).to_vec()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn a_recycled_slot_shows_the_next_tenant_nothing_of_the_last() {
        let sandbox = sandbox().await;
        // The scan finds what an instance wrote, and a recycled slot is
        // reset before the next instance sees it.
        let written = fresh_memory(&sandbox, Some(CANARY.as_bytes())).await;
        assert!(contains(&written, CANARY.as_bytes()));
        let next = fresh_memory(&sandbox, None).await;
        assert!(
            !contains(&next, CANARY.as_bytes()),
            "a written page survived"
        );

        // Tenant A's worker spreads its secret over its heap.
        let mut event = Event::new("e-a", "tenant-a", "brigade.sh/cli", "exec");
        event.project.secrets.insert("canary".into(), CANARY.into());
        let script = ScriptSource::new(
            "brigade.js",
            r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const secret = event.project.secrets.canary;
  globalThis.kept = [];
  for (let i = 0; i < 1000; i++) kept.push(secret + i, [secret].join(""));
  console.log(`kept ${kept.length} copies`);
});
events.process();
"#,
        );
        let log = MemoryLog::new();
        let outcome = sandbox
            .run(
                &script,
                WorkerRequest {
                    event,
                    limits: WorkerLimits::default(),
                    log: Arc::new(log.clone()),
                    jobs: JobCapability::none(),
                },
            )
            .await;
        assert!(outcome.failure.is_none(), "{outcome:?}");
        assert!(log.messages().contains(&"kept 2000 copies".to_string()));
        // Tenant B's instance, in the slot A's worker left.
        let memory = fresh_memory(&sandbox, None).await;
        assert!(
            !contains(&memory, CANARY.as_bytes()),
            "tenant A's secret is in tenant B's fresh memory"
        );
    }
}
