//! Compiled modules as scripts (`brigade.wasm`): what the host checks before
//! it compiles one.
//!
//! A module is a tenant's code in its rawest form, so everything about it
//! that costs the host is bounded before Cranelift sees it: its size, its
//! functions and their bodies, how deep their blocks nest, its memories,
//! tables and globals. Its imports are the host API and the WASI functions
//! of [`crate::wasi`] and nothing else; its exports are `_start` (a WASI
//! command: the host calls it once per event) and `memory`. The check is one
//! linear pass of wasmparser's reader over the module, cheap enough to run
//! when a project is saved, and it runs again before every compilation.

use mizzen_host_api::abi;
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef};

/// The largest module accepted. Go's runtime makes a small script 2–5 MB and
/// a Rust one well under 1 MB; 16 MiB leaves room for large programs, fits a
/// server's 25 MiB request in base64, and bounds the compile time (Cranelift
/// is roughly linear in the code it gets: see BENCHMARKS.md).
pub const MAX_MODULE_BYTES: usize = 16 * 1024 * 1024;

/// Functions defined or imported. A small Go script has 2,600, a Rust one
/// 600; a million empty functions are 3 MB of module but cost the compiler
/// per function.
pub const MAX_FUNCTIONS: u32 = 100_000;

/// The largest function body, in bytes. Go's largest generated function in
/// a small script is 25 KB; a single huge function is where an optimising
/// compiler stops being linear.
pub const MAX_FUNCTION_BYTES: usize = 1024 * 1024;

/// Blocks, loops and ifs open at once in one function. Go's backend nests a
/// block per resume point: 494 deep in its largest function of a small
/// script; deeper nesting has no use but to stress the compiler.
pub const MAX_BLOCK_NESTING: u32 = 10_000;

/// Globals defined or imported; compilers emit a few dozen.
pub const MAX_GLOBALS: u32 = 10_000;

/// Memories of a Wasm job's component, all its core modules together (a
/// program adapted from preview 1 has two).
const COMPONENT_MEMORIES: u64 = 4;

/// Tables of a Wasm job's component (an adapted program has three).
const COMPONENT_TABLES: u64 = 8;

/// Elements of the one table a module may have (the pooling allocator
/// reserves this many per instance).
pub const MAX_TABLE_ELEMENTS: u64 = crate::worker::MAX_TABLE_ELEMENTS as u64;

/// Why a module cannot be a script. Each names the module and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleProblem {
    /// Larger than [`MAX_MODULE_BYTES`].
    #[error("{name}: the module is {bytes} bytes; the limit is {MAX_MODULE_BYTES} bytes (16 MiB)")]
    TooLarge {
        /// The module's file name.
        name: String,
        /// Its size.
        bytes: usize,
    },
    /// Not a WebAssembly module at all, or a component.
    #[error("{name}: not a WebAssembly core module: {message}")]
    NotAModule {
        /// The module's file name.
        name: String,
        /// The parser's complaint, with its offset.
        message: String,
    },
    /// An import the host does not grant.
    #[error(
        "{name}: imports {module:?} {field:?}, which the host does not provide (a script may import {} \"call\" and \"take_reply\", and the WASI preview 1 functions listed in docs/host-api.md)",
        abi::IMPORT_MODULE
    )]
    Import {
        /// The module's file name.
        name: String,
        /// The import's module.
        module: String,
        /// The import's name.
        field: String,
    },
    /// An import a Wasm job is not granted.
    #[error(
        "{name}: imports {module:?} {field:?}, which a Wasm job is not granted (a job's module may import only the WASI preview 1 functions, \"wasi_snapshot_preview1\"; no network, no host API)"
    )]
    JobImport {
        /// The module's file name.
        name: String,
        /// The import's module.
        module: String,
        /// The import's name.
        field: String,
    },
    /// An import a Wasm job's component is not granted.
    #[error(
        "{name}: imports {import:?}, which a Wasm job is not granted (a component may import only WASI interfaces, wasi:*; no network)"
    )]
    ComponentImport {
        /// The component's file name.
        name: String,
        /// What it imports.
        import: String,
    },
    /// A count or size past its limit.
    #[error("{name}: {what} is {value}; the limit is {limit}")]
    Limit {
        /// The module's file name.
        name: String,
        /// What was counted, e.g. "the number of functions".
        what: String,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Something the sandbox does not run: a second memory, a shared or
    /// 64-bit memory, a missing export.
    #[error("{name}: {message}")]
    Unsupported {
        /// The module's file name.
        name: String,
        /// What.
        message: String,
    },
}

/// What a module is run as: its imports and its messages differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A script (`brigade.wasm`): the host API and [`crate::wasi`]'s
    /// functions.
    Script,
    /// A Wasm job: WASI preview 1 as wasmtime-wasi implements it
    /// ([`crate::wasm_job::WASI_FUNCTIONS`]), and nothing of the host API.
    Job,
}

/// Checks a script's module against everything above, in one pass.
pub fn check(name: &str, bytes: &[u8]) -> Result<(), ModuleProblem> {
    check_as(name, bytes, Role::Script)
}

/// Checks a Wasm job's module: the same bounds as a script's, and WASI
/// preview 1 as its only imports.
pub fn check_job(name: &str, bytes: &[u8]) -> Result<(), ModuleProblem> {
    check_as(name, bytes, Role::Job)
}

fn check_as(name: &str, bytes: &[u8], role: Role) -> Result<(), ModuleProblem> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(ModuleProblem::TooLarge {
            name: name.to_string(),
            bytes: bytes.len(),
        });
    }
    let malformed = |e: wasmparser::BinaryReaderError| ModuleProblem::NotAModule {
        name: name.to_string(),
        message: e.to_string(),
    };
    let limit = |what: &str, value: u64, limit: u64| -> Result<(), ModuleProblem> {
        if value > limit {
            return Err(ModuleProblem::Limit {
                name: name.to_string(),
                what: what.to_string(),
                value,
                limit,
            });
        }
        Ok(())
    };
    let unsupported = |message: &str| ModuleProblem::Unsupported {
        name: name.to_string(),
        message: message.to_string(),
    };
    let (mut functions, mut memories, mut tables, mut globals) = (0u64, 0u64, 0u64, 0u64);
    let (mut has_start, mut has_memory) = (false, false);
    // A job may be a WASI preview 2 command component: its core modules
    // are bounded as a module's are, their imports are its own wiring, and
    // what it imports from the host must be WASI.
    let component = role == Role::Job && Parser::is_component(bytes);
    let (most_memories, most_tables) = if component {
        (COMPONENT_MEMORIES, COMPONENT_TABLES)
    } else {
        (1, 1)
    };
    // How deep in nested modules and components a payload is: 1 is the
    // binary itself, whose imports are what the host must grant.
    let mut depth = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(malformed)?;
        match &payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
        match payload {
            Payload::Version { encoding, .. }
                if encoding != wasmparser::Encoding::Module && !component =>
            {
                return Err(unsupported(
                    "is a component; a script is a core module (wasm32-wasip1)",
                ));
            }
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(malformed)?;
                    if !import.name.name.starts_with("wasi:") {
                        return Err(ModuleProblem::ComponentImport {
                            name: name.to_string(),
                            import: import.name.name.to_string(),
                        });
                    }
                }
            }
            Payload::ImportSection(reader) if component => {
                functions += u64::from(reader.count());
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(malformed)?;
                    let granted = match (role, import.module) {
                        (Role::Script, abi::IMPORT_MODULE) => {
                            [abi::CALL, abi::TAKE_REPLY].contains(&import.name)
                        }
                        (Role::Script, crate::wasi::MODULE) => {
                            crate::wasi::FUNCTIONS.contains(&import.name)
                        }
                        (Role::Job, crate::wasi::MODULE) => {
                            crate::wasm_job::WASI_FUNCTIONS.contains(&import.name)
                        }
                        _ => false,
                    };
                    if !granted || !matches!(import.ty, TypeRef::Func(_)) {
                        if role == Role::Job {
                            return Err(ModuleProblem::JobImport {
                                name: name.to_string(),
                                module: import.module.to_string(),
                                field: import.name.to_string(),
                            });
                        }
                        return Err(ModuleProblem::Import {
                            name: name.to_string(),
                            module: import.module.to_string(),
                            field: import.name.to_string(),
                        });
                    }
                    functions += 1;
                }
            }
            Payload::FunctionSection(reader) => {
                functions += u64::from(reader.count());
                limit("the number of functions", functions, MAX_FUNCTIONS.into())?;
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    let table = table.map_err(malformed)?;
                    tables += 1;
                    limit("the number of tables", tables, most_tables)?;
                    limit(
                        "the table's initial size",
                        table.ty.initial,
                        MAX_TABLE_ELEMENTS,
                    )?;
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(malformed)?;
                    memories += 1;
                    if memories > most_memories {
                        return Err(unsupported(
                            "defines more than one memory; a script has exactly one",
                        ));
                    }
                    if memory.memory64 || memory.shared {
                        return Err(unsupported(
                            "defines a 64-bit or shared memory; a script's memory is 32-bit and its own",
                        ));
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                globals += u64::from(reader.count());
                limit("the number of globals", globals, MAX_GLOBALS.into())?;
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(malformed)?;
                    match (export.name, export.kind) {
                        ("_start", ExternalKind::Func) => has_start = true,
                        ("memory", ExternalKind::Memory) => has_memory = true,
                        _ => {}
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                limit(
                    "the size of a function body in bytes",
                    size as u64,
                    MAX_FUNCTION_BYTES as u64,
                )?;
                let mut depth = 0u32;
                let mut operators = body.get_operators_reader().map_err(malformed)?;
                while !operators.eof() {
                    match operators.read().map_err(malformed)? {
                        Operator::Block { .. }
                        | Operator::Loop { .. }
                        | Operator::If { .. }
                        | Operator::TryTable { .. } => {
                            depth += 1;
                            limit(
                                "the nesting of blocks in a function",
                                depth.into(),
                                MAX_BLOCK_NESTING.into(),
                            )?;
                        }
                        Operator::End => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if component {
        // Its exports (wasi:cli/run) are checked when it is linked.
        return Ok(());
    }
    if !has_start {
        return Err(unsupported(match role {
            Role::Script => {
                "exports no function \"_start\"; a script is a WASI command (a program with a main function), and the host runs _start once per event"
            }
            Role::Job => {
                "exports no function \"_start\"; a Wasm job is a WASI command (a program with a main function; a reactor or a library is not)"
            }
        }));
    }
    if !has_memory {
        return Err(unsupported(match role {
            Role::Script => {
                "exports no memory named \"memory\", which the host reads requests from"
            }
            Role::Job => "exports no memory named \"memory\", which WASI reads and writes through",
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).expect("valid text")
    }

    const MINIMAL: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

    #[test]
    fn a_command_with_granted_imports_passes() {
        check(
            "brigade.wasm",
            &module(
                r#"(module
                    (import "mizzen:host/v1" "call" (func (param i32 i32 i32) (result i64)))
                    (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                    (memory (export "memory") 1) (func (export "_start")))"#,
            ),
        )
        .unwrap();
        check("brigade.wasm", &module(MINIMAL)).unwrap();
    }

    #[test]
    fn an_import_the_host_does_not_grant_is_named() {
        let err = check(
            "brigade.wasm",
            &module(
                r#"(module (import "wasi_snapshot_preview1" "path_open" (func))
                    (memory (export "memory") 1) (func (export "_start")))"#,
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains(r#""path_open""#), "{err}");
        let err = check(
            "brigade.wasm",
            &module(r#"(module (import "env" "memory" (memory 1)) (func (export "_start")))"#),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(r#"imports "env" "memory""#),
            "{err}"
        );
    }

    #[test]
    fn deep_nesting_and_missing_exports_are_refused() {
        let deep = format!(
            r#"(module (memory (export "memory") 1) (func (export "_start") {} {}))"#,
            "(block ".repeat(MAX_BLOCK_NESTING as usize + 1),
            ")".repeat(MAX_BLOCK_NESTING as usize + 1)
        );
        let err = check("brigade.wasm", &module(&deep)).unwrap_err();
        assert!(err.to_string().contains("nesting of blocks"), "{err}");
        let err = check(
            "brigade.wasm",
            &module("(module (func (export \"_start\")))"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let err = check("x.wasm", b"not wasm").unwrap_err();
        assert!(
            err.to_string().starts_with("x.wasm: not a WebAssembly"),
            "{err}"
        );
    }
}
