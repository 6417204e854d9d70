//! The Javy plugin: pre-initialised with Wizer and compiled once per process,
//! and cached on disk between processes.
//!
//! Pre-initialisation runs the plugin's `initialize-runtime` (QuickJS plus the
//! whole Brigadier library) and snapshots its memory into a new module, so a
//! fresh instance starts with everything ready. Compiling that module with
//! Cranelift takes seconds on a small machine; the compiled artifact is
//! therefore kept in the cache directory, keyed by the plugin's hash and the
//! engine's configuration, so that only the first run on a machine pays.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Instance, Linker, Module, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use crate::SandboxError;
use crate::worker::WorkerState;

/// The plugin, built by guest-sdk/javy-plugin/build.sh from
/// guest-sdk/js/brigadier.js and guest-sdk/javy-plugin/src.
pub(crate) const PLUGIN_WASM: &[u8] =
    include_bytes!("../../../guest-sdk/javy-plugin/mizzen_plugin.wasm");

/// The plugin's initialisation export, removed from the snapshot.
const INIT_FUNCTION: &str = "initialize-runtime";

/// The pre-initialised, compiled plugin: from the cache directory when a
/// matching artifact is there, otherwise built and stored there.
pub(crate) async fn load(
    engine: &Engine,
    linker: &Linker<WorkerState>,
    new_store: impl Fn(WorkerState) -> Store<WorkerState>,
    cache_dir: Option<&Path>,
) -> Result<Module, SandboxError> {
    let cached = cache_dir.map(|dir| dir.join(artifact_name(engine)));
    if let Some(module) = cached_artifact(engine, cached.as_deref()) {
        return Ok(module);
    }
    let snapshot = preinitialise(engine, linker, new_store).await?;
    let module = Module::new(engine, &snapshot)
        .map_err(|e| SandboxError::plugin("compiling the pre-initialised plugin failed", e))?;
    keep_artifact(&module, cached.as_deref());
    Ok(module)
}

/// The module compiled into `path` before, if it is there and usable (an
/// unusable one is removed, to be written again).
fn cached_artifact(engine: &Engine, path: Option<&Path>) -> Option<Module> {
    let path = path.filter(|path| path.is_file())?;
    match deserialize(engine, path) {
        Ok(module) => Some(module),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring an unusable cached artifact");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Stores `module` at `path` for the next process; a failure only costs
/// that process a compilation.
fn keep_artifact(module: &Module, path: Option<&Path>) {
    if let Some(path) = path
        && let Err(error) = store_artifact(module, path)
    {
        tracing::warn!(path = %path.display(), %error, "could not cache a compiled artifact");
    }
}

/// `plugin-<plugin hash>-<engine hash>.cwasm`: a new plugin build or another
/// wasmtime version or configuration never picks up a stale artifact.
fn artifact_name(engine: &Engine) -> String {
    artifact_name_of("plugin", PLUGIN_WASM, engine)
}

fn artifact_name_of(prefix: &str, wasm: &[u8], engine: &Engine) -> String {
    let hash = Sha256::digest(wasm);
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}-{:016x}.cwasm", hasher.finish())
}

/// Bytecode kept in `cache_dir/bytecode`: a script compiles in
/// milliseconds, a bundle of megabytes in a second; 256 MiB keeps thousands
/// of project versions, least recently used first.
const BYTECODE_BUDGET: u64 = 256 * 1024 * 1024;

/// Compiled modules kept in `cache_dir/modules`: machine code is a few
/// times its module's size (at most 16 MiB), so 1 GiB keeps dozens of the
/// largest and hundreds of ordinary ones, least recently used first.
const MODULES_BUDGET: u64 = 1024 * 1024 * 1024;

/// A cached file used within this long is never swept: another process may
/// be reading it.
const CACHE_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// What starts a bytecode file, before the SHA-256 of the bytecode that
/// follows (a file cut short or altered is compiled again, never loaded).
const BYTECODE_MAGIC: &[u8; 8] = b"mzqjsbc1";

/// `cache_dir/bytecode/<plugin hash>-<script key>.qjsbc`: bytecode is
/// QuickJS's of this plugin build, for the script whose key (the hash of
/// its language, name and code) names it.
fn bytecode_path(cache_dir: &Path, key: &crate::script::ScriptKey) -> std::path::PathBuf {
    // Hashing the plugin takes milliseconds: once per process.
    static PLUGIN_HASH: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hex::encode(&Sha256::digest(PLUGIN_WASM)[..16]));
    cache_dir
        .join("bytecode")
        .join(format!("{}-{}.qjsbc", *PLUGIN_HASH, hex::encode(key)))
}

/// A script's bytecode compiled by any process before, when it is whole.
pub(crate) fn cached_bytecode(
    cache_dir: Option<&Path>,
    key: &crate::script::ScriptKey,
) -> Option<Vec<u8>> {
    let path = bytecode_path(cache_dir?, key);
    let file = std::fs::read(&path).ok()?;
    let rest = file.strip_prefix(BYTECODE_MAGIC.as_slice())?;
    let (hash, bytecode) = rest.split_at_checked(32)?;
    if Sha256::digest(bytecode).as_slice() != hash {
        let _ = std::fs::remove_file(&path);
        return None;
    }
    crate::cache_files::touch(&path);
    Some(bytecode.to_vec())
}

/// Keeps a script's bytecode for other processes and later runs; a failure
/// only costs them a compilation.
pub(crate) fn keep_bytecode(
    cache_dir: Option<&Path>,
    key: &crate::script::ScriptKey,
    bytecode: &[u8],
) {
    let Some(cache_dir) = cache_dir else {
        return;
    };
    let path = bytecode_path(cache_dir, key);
    let written = (|| -> std::io::Result<()> {
        let dir = path.parent().expect("inside the cache directory");
        std::fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut file, BYTECODE_MAGIC)?;
        std::io::Write::write_all(&mut file, &Sha256::digest(bytecode))?;
        std::io::Write::write_all(&mut file, bytecode)?;
        file.persist(&path).map_err(|e| e.error)?;
        crate::cache_files::sweep(dir, "qjsbc", BYTECODE_BUDGET, CACHE_GRACE, |p| {
            std::fs::metadata(p).ok().map(|m| m.len())
        });
        Ok(())
    })();
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "could not cache a script's bytecode");
    }
}

/// A script's module, compiled: from `cache_dir/modules` when it was
/// compiled before (by any process), else compiled now and stored there.
/// The artifact is named by the hash of the module's bytes, so a tenant can
/// only ever load the machine code of the exact module it gave.
pub(crate) fn compile_cached(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> wasmtime::Result<Module> {
    let cached = cache_dir.map(|dir| {
        dir.join("modules")
            .join(artifact_name_of("module", wasm, engine))
    });
    if let Some(module) = cached_artifact(engine, cached.as_deref()) {
        if let Some(path) = cached.as_deref() {
            crate::cache_files::touch(path);
        }
        return Ok(module);
    }
    let module = Module::new(engine, wasm)?;
    keep_artifact(&module, cached.as_deref());
    if let Some(dir) = cached.as_deref().and_then(Path::parent) {
        crate::cache_files::sweep(dir, "cwasm", MODULES_BUDGET, CACHE_GRACE, |p| {
            std::fs::metadata(p).ok().map(|m| m.len())
        });
    }
    Ok(module)
}

#[expect(
    unsafe_code,
    reason = "deserialising a compiled module trusts the file; it is ours, written by store_artifact \
              into the user's own cache directory, and named by the hashes of the plugin (or the \
              script's module) and the engine"
)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    // SAFETY: see the reason above; wasmtime also checks that the artifact
    // was compiled by this wasmtime version with a compatible configuration.
    unsafe { Module::deserialize_file(engine, path) }
}

/// A second, independent `Module` of the same compiled plugin (its own id,
/// hence its own memory slots in the pooling allocator).
#[expect(
    unsafe_code,
    reason = "deserialising trusts the bytes; they were serialised from a module of this engine just now"
)]
pub(crate) fn duplicate(engine: &Engine, module: &Module) -> Result<Module, SandboxError> {
    let bytes = module
        .serialize()
        .map_err(|e| SandboxError::plugin("serialising the plugin failed", e))?;
    // SAFETY: see the reason above.
    unsafe { Module::deserialize(engine, &bytes) }
        .map_err(|e| SandboxError::plugin("copying the plugin failed", e))
}

fn store_artifact(module: &Module, path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .expect("artifact paths are inside the cache directory");
    std::fs::create_dir_all(dir)?;
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    // Written under a temporary name and renamed, so that a concurrent reader
    // never sees half a file.
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, &bytes)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Runs the plugin's initialisation and snapshots the result.
async fn preinitialise(
    engine: &Engine,
    linker: &Linker<WorkerState>,
    new_store: impl Fn(WorkerState) -> Store<WorkerState>,
) -> Result<Vec<u8>, SandboxError> {
    let fail = SandboxError::plugin;
    let mut wizer = Wizer::new();
    wizer.init_func(INIT_FUNCTION);
    let (context, instrumented) = wizer
        .instrument(PLUGIN_WASM)
        .map_err(|e| fail("the plugin is not a valid module", e))?;
    let module =
        Module::new(engine, &instrumented).map_err(|e| fail("compiling the plugin failed", e))?;
    let mut store = new_store(WorkerState::new(
        crate::sandbox::INITIALISATION_LIMITS,
        None,
        Default::default(),
    ));
    let instance = linker
        .instantiate_async(&mut store, &module)
        .await
        .map_err(|e| fail("instantiating the plugin failed", e))?;
    instance
        .get_typed_func::<(), ()>(&mut store, INIT_FUNCTION)
        .map_err(|e| fail("the plugin has no initialisation function", e))?
        .call_async(&mut store, ())
        .await
        .map_err(|e| fail("initialising the plugin failed", e))?;
    wizer
        .snapshot(
            &context,
            &mut Snapshot {
                store: &mut store,
                instance,
            },
        )
        .await
        .map_err(|e| fail("snapshotting the plugin failed", e))
}

/// Gives Wizer the initialised instance's globals and memory.
struct Snapshot<'a> {
    store: &'a mut Store<WorkerState>,
    instance: Instance,
}

impl InstanceState for Snapshot<'_> {
    async fn global_get(&mut self, name: &str, _type_hint: ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("Wizer asks only for globals it exported");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("the plugin has a global of an unsupported type: {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("Wizer asks only for memories it exported");
        contents(memory.data(&*self.store));
    }
}
