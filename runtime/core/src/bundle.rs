//! A script's own modules and npm packages, bundled with it into one text
//! the plugin compiles once.
//!
//! Every `require("…")`, `import … from "…"` and `import("…")` with a string
//! literal is resolved on the host as Node resolves it (oxc_resolver:
//! relative files, folders' `index.js`, JSON, `package.json` `main` and
//! `exports`, `node_modules` lookup) from the config files directory and,
//! for packages, from the tree the npm installer unpacked (`crate::npm`).
//! Each module becomes a CommonJS factory appended after the script's own
//! text, so the script's lines and columns stay exactly its own; an ES
//! module's `import`s and `export`s are rewritten in place (statement by
//! statement, keeping every line where it was) into `require` calls and
//! export getters. A module outside those two directories, a Node built-in
//! (`fs`, `http`, …) and a cycle are refused here, before anything runs,
//! naming the file, the line and the path.
//!
//! The layout of the appended part ([`BundleLayout`]) goes with the script,
//! so that an error at a bundle line is reported at the module's own line.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use oxc_allocator::Allocator;
use oxc_ast::ast::{
    CallExpression, Declaration, ExportDefaultDeclarationKind, Expression,
    ImportDeclarationSpecifier, ImportExpression, ImportOrExportKind, ModuleDeclaration,
    ModuleExportName,
};
use oxc_ast_visit::{Visit, walk};
use oxc_parser::Parser;
use oxc_resolver::{ResolveError, ResolveOptions, Resolver};
use oxc_span::{GetSpan, SourceType, Span};

use crate::script::{
    BundleLayout, Language, MAX_SCRIPT_BYTES, ModuleLines, ScriptProblem, ScriptSource,
};

/// The names under which scripts import the built-in Brigadier library:
/// whatever version a `package.json` lists, these never come from npm.
pub const BRIGADIER_MODULES: [&str; 2] = ["@brigadecore/brigadier", "brigadier"];

/// The Node built-in modules the sandbox provides, pure JavaScript in
/// `guest-sdk/js/brigadier.js` (its `nodeModules`), also as `node:name`. The
/// others (`fs`, `http`, `child_process`...) are refused.
pub const NODE_MODULES: [&str; 6] = [
    "path",
    "path/posix",
    "events",
    "util",
    "assert",
    "assert/strict",
];

/// Modules in one bundle. Real scripts use a few dozen; the packages Brigade
/// scripts use (name generators, semver, lodash) stay under a thousand
/// files. The 8 MiB cap on the bundle's text binds long before this; the
/// count only stops a tree of tiny files from costing a resolution each.
pub const MAX_MODULES: usize = 10_000;

/// Why a script's modules cannot be bundled. Each names the requiring file
/// and line and the path.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A module that does not exist.
    #[error("{file}:{line}: cannot find module '{specifier}' (looked from {from})")]
    NotFound {
        /// The requiring file.
        file: String,
        /// Where it asks for the module.
        line: usize,
        /// What it asked for.
        specifier: String,
        /// The directory the lookup started from (relative to the config files directory).
        from: String,
    },
    /// A Node built-in module, which the sandbox does not have.
    #[error(
        "{file}:{line}: '{module}' is a Node.js built-in module, which the sandbox does not provide (it provides path, events, util and assert; scripts reach jobs, secrets and the workspace through @brigadecore/brigadier)"
    )]
    NodeBuiltin {
        /// The requiring file.
        file: String,
        /// Where.
        line: usize,
        /// The module.
        module: String,
    },
    /// A path that leads out of the config files directory.
    #[error(
        "{file}:{line}: '{specifier}' resolves to {path}, outside the project's config files directory and its installed packages"
    )]
    Outside {
        /// The requiring file.
        file: String,
        /// Where.
        line: usize,
        /// What it asked for.
        specifier: String,
        /// Where that led.
        path: String,
    },
    /// Modules that require each other.
    #[error(
        "a dependency cycle: {0}; the sandbox loads each module once, in order, and refuses cycles"
    )]
    Cycle(String),
    /// More than [`MAX_MODULES`].
    #[error("the script requires more than {MAX_MODULES} modules")]
    TooManyModules,
    /// The bundle's text is over [`MAX_SCRIPT_BYTES`].
    #[error(
        "the script and its modules come to more than {MAX_SCRIPT_BYTES} bytes (at {file}); the limit is {MAX_SCRIPT_BYTES} bytes"
    )]
    TooLarge {
        /// The module that went over.
        file: String,
    },
    /// A module that cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A JSON module that is not JSON.
    #[error("{file}: not valid JSON: {message}")]
    Json {
        /// The file.
        file: String,
        /// The parser's complaint.
        message: String,
    },
    /// A module that does not parse.
    #[error(transparent)]
    Script(#[from] ScriptProblem),
}

/// A module's request for another: the specifier and where it is.
struct Request {
    specifier: String,
    line: usize,
}

/// A module's text as CommonJS, with what it requests.
struct Converted {
    /// The module's code, line for line as in its file.
    code: String,
    /// Whether the code differs from the file's.
    rewritten: bool,
    /// Code to run before the module's own (export getters); one line.
    prelude: String,
    requests: Vec<Request>,
}

/// One module of the bundle.
struct Loaded {
    id: String,
    converted: Converted,
    /// Specifier → module id.
    resolved: BTreeMap<String, String>,
}

/// Bundles `main` with the modules it requires, from `config` (the config
/// files directory) and `packages` (a directory holding `node_modules`, as
/// the npm installer left it). `Ok(None)` when the script requires nothing
/// but the Brigadier library: it runs as it is.
pub fn bundle(
    config: &Path,
    packages: Option<&Path>,
    main: &ScriptSource,
) -> Result<Option<Bundled>, BundleError> {
    if main.language() == Language::Wasm {
        return Ok(None);
    }
    if main.code().len() > MAX_SCRIPT_BYTES {
        return Err(ScriptProblem::TooLarge {
            name: main.name().into(),
            bytes: main.code().len(),
        }
        .into());
    }
    let text = std::str::from_utf8(main.code()).map_err(|e| ScriptProblem::NotText {
        name: main.name().into(),
        offset: e.valid_up_to(),
    })?;
    let source_type = match main.language() {
        Language::TypeScript => SourceType::ts().with_unambiguous(true),
        _ => SourceType::unambiguous(),
    };
    let main_converted = convert(main.name(), text, source_type, Role::Main)?;
    if main_converted.requests.is_empty() && !main_converted.rewritten {
        return Ok(None);
    }
    let roots = Roots::new(config, packages, main.name())?;
    let resolver = Resolver::new(ResolveOptions {
        extensions: [".js", ".json", ".ts", ".cjs", ".mjs"]
            .map(String::from)
            .to_vec(),
        condition_names: ["require", "node", "default"].map(String::from).to_vec(),
        main_fields: vec!["main".into()],
        modules: std::iter::once("node_modules".to_string())
            .chain(
                roots
                    .packages
                    .iter()
                    .map(|p| p.join("node_modules").display().to_string()),
            )
            .collect(),
        builtin_modules: true,
        node_path: false,
        ..ResolveOptions::default()
    });

    let mut files = vec![];
    let main_resolved = resolve_all(
        &resolver,
        &roots,
        main.name(),
        &roots.config,
        &main_converted.requests,
    )?;
    let mut modules: Vec<Loaded> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut queue: VecDeque<(String, PathBuf)> = VecDeque::new();
    let mut bytes = main.code().len();
    let enqueue = |resolved: &BTreeMap<String, (String, PathBuf)>,
                   index: &mut HashMap<String, usize>,
                   queue: &mut VecDeque<(String, PathBuf)>,
                   count: usize|
     -> Result<(), BundleError> {
        for (id, path) in resolved.values() {
            if !index.contains_key(id) {
                if count + queue.len() >= MAX_MODULES {
                    return Err(BundleError::TooManyModules);
                }
                index.insert(id.clone(), usize::MAX);
                queue.push_back((id.clone(), path.clone()));
            }
        }
        Ok(())
    };
    enqueue(&main_resolved, &mut index, &mut queue, 0)?;
    while let Some((id, path)) = queue.pop_front() {
        // Sized before it is read: a repository may hold a file of gigabytes.
        let read_error = |error| BundleError::Read {
            path: id.clone(),
            error,
        };
        let size = std::fs::metadata(&path).map_err(read_error)?.len();
        if bytes as u64 + size > MAX_SCRIPT_BYTES as u64 {
            return Err(BundleError::TooLarge { file: id });
        }
        let text = std::fs::read(&path).map_err(read_error)?;
        bytes += text.len();
        if bytes > MAX_SCRIPT_BYTES {
            return Err(BundleError::TooLarge { file: id });
        }
        if roots.is_local(&path) {
            files.push(id.clone());
        }
        let converted = load(&id, &path, text)?;
        let dir = path.parent().unwrap_or(&roots.config).to_path_buf();
        let resolved = resolve_all(&resolver, &roots, &id, &dir, &converted.requests)?;
        enqueue(&resolved, &mut index, &mut queue, modules.len())?;
        index.insert(id.clone(), modules.len());
        modules.push(Loaded {
            id,
            converted,
            resolved: resolved.into_iter().map(|(s, (id, _))| (s, id)).collect(),
        });
    }
    refuse_cycles(main.name(), &main_resolved, &modules, &index)?;

    let main_map: BTreeMap<String, String> = main_resolved
        .into_iter()
        .map(|(s, (id, _))| (s, id))
        .collect();
    let (appended, layout_modules) = emit(&main_map, &modules);
    let mut code = main_converted.code;
    let main_bytes = code.len();
    code.push('\n');
    code.push_str(&appended);
    if code.len() > MAX_SCRIPT_BYTES {
        return Err(BundleError::TooLarge {
            file: main.name().into(),
        });
    }
    let layout = BundleLayout {
        main_bytes,
        modules: layout_modules,
    };
    Ok(Some(Bundled {
        script: ScriptSource::bundled(main.name(), main.language(), code, layout),
        files,
    }))
}

/// A bundled script and what went into it.
#[derive(Debug, Clone)]
pub struct Bundled {
    /// The script with its modules.
    pub script: ScriptSource,
    /// The config directory's own files it read (relative paths), besides
    /// the script.
    pub files: Vec<String>,
}

/// The directories modules may come from, canonical, and the script's id.
struct Roots {
    config: PathBuf,
    packages: Option<PathBuf>,
    main: String,
}

impl Roots {
    fn new(config: &Path, packages: Option<&Path>, main: &str) -> Result<Self, BundleError> {
        let canonical = |p: &Path| {
            p.canonicalize().map_err(|error| BundleError::Read {
                path: p.display().to_string(),
                error,
            })
        };
        Ok(Self {
            config: canonical(config)?,
            packages: packages.map(canonical).transpose()?,
            main: main.to_string(),
        })
    }

    fn is_local(&self, path: &Path) -> bool {
        path.starts_with(&self.config)
    }

    /// The module id of a file (its path relative to the root it is in), or
    /// `None` when it is in neither root. Symbolic links are followed first,
    /// so a link cannot lead out.
    fn id(&self, path: &Path) -> Option<(String, PathBuf)> {
        let real = path.canonicalize().ok()?;
        let relative = real
            .strip_prefix(&self.config)
            .ok()
            .or_else(|| real.strip_prefix(self.packages.as_ref()?).ok())?;
        let id = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        Some((id, real))
    }
}

/// Resolves every request of one module.
fn resolve_all(
    resolver: &Resolver,
    roots: &Roots,
    file: &str,
    dir: &Path,
    requests: &[Request],
) -> Result<BTreeMap<String, (String, PathBuf)>, BundleError> {
    let mut resolved = BTreeMap::new();
    for request in requests {
        if resolved.contains_key(&request.specifier) {
            continue;
        }
        let from = || {
            dir.strip_prefix(&roots.config)
                .map(|p| format!("./{}", p.display()))
                .unwrap_or_else(|_| dir.display().to_string())
        };
        let path = match resolver.resolve(dir, &request.specifier) {
            Ok(resolution) => resolution.into_path_buf(),
            Err(ResolveError::Builtin { .. }) => {
                return Err(BundleError::NodeBuiltin {
                    file: file.into(),
                    line: request.line,
                    module: request.specifier.clone(),
                });
            }
            Err(_) => {
                return Err(BundleError::NotFound {
                    file: file.into(),
                    line: request.line,
                    specifier: request.specifier.clone(),
                    from: from(),
                });
            }
        };
        let Some(id) = roots.id(&path) else {
            return Err(BundleError::Outside {
                file: file.into(),
                line: request.line,
                specifier: request.specifier.clone(),
                path: path.display().to_string(),
            });
        };
        // The script itself runs once, as the script; requiring it is a
        // cycle back to it.
        if id.0 == roots.main {
            return Err(BundleError::Cycle(format!(
                "{} → {file} → {}",
                roots.main, roots.main
            )));
        }
        resolved.insert(request.specifier.clone(), id);
    }
    Ok(resolved)
}

/// A module's text as CommonJS.
fn load(id: &str, path: &Path, bytes: Vec<u8>) -> Result<Converted, BundleError> {
    let text = String::from_utf8(bytes).map_err(|e| ScriptProblem::NotText {
        name: id.into(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension {
        "json" => {
            serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
                BundleError::Json {
                    file: format!("{id}:{}", e.line()),
                    message: e.to_string(),
                }
            })?;
            Ok(Converted {
                code: format!("module.exports = {text}\n;"),
                rewritten: true,
                prelude: String::new(),
                requests: vec![],
            })
        }
        "ts" | "mts" | "cts" => {
            let source = ScriptSource::new(id, text);
            let prepared = crate::script::prepare(&source)?;
            convert(
                id,
                &prepared.javascript,
                SourceType::unambiguous(),
                Role::Dependency,
            )
        }
        _ => convert(id, &text, SourceType::unambiguous(), Role::Dependency),
    }
}

/// Whether a module is the script itself (an ES module stays one, with only
/// its imports of other modules rewritten) or one of its dependencies
/// (becomes CommonJS).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Dependency,
}

/// Text edits, applied from the end.
struct Edits(Vec<(Span, String)>);

impl Edits {
    /// Replaces `span` with `text` followed by as many line breaks as the
    /// span held, so that every later line stays where it was.
    fn replace(&mut self, source: &str, span: Span, text: String) {
        let breaks = source[span.start as usize..span.end as usize]
            .matches('\n')
            .count();
        self.0.push((span, text + &"\n".repeat(breaks)));
    }

    /// Replaces `span` with spaces (and its line breaks), keeping columns too.
    fn blank(&mut self, source: &str, span: Span) {
        let text = source[span.start as usize..span.end as usize]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        self.0.push((span, text));
    }

    fn apply(mut self, source: &str) -> String {
        self.0.sort_by_key(|(span, _)| span.start);
        let mut out = String::with_capacity(source.len() + 256);
        let mut at = 0usize;
        for (span, text) in self.0 {
            out.push_str(&source[at..span.start as usize]);
            out.push_str(&text);
            at = span.end as usize;
        }
        out.push_str(&source[at..]);
        out
    }
}

/// Finds `require("…")` and `import("…")` with literal arguments.
struct Requires {
    found: Vec<(String, u32)>,
}

impl<'a> Visit<'a> for Requires {
    fn visit_call_expression(&mut self, it: &CallExpression<'a>) {
        if let Some(literal) = it.common_js_require() {
            self.found
                .push((literal.value.to_string(), literal.span.start));
        }
        walk::walk_call_expression(self, it);
    }

    fn visit_import_expression(&mut self, it: &ImportExpression<'a>) {
        if let Expression::StringLiteral(literal) = &it.source {
            self.found
                .push((literal.value.to_string(), literal.span.start));
        }
        walk::walk_import_expression(self, it);
    }
}

fn export_name(name: &ModuleExportName<'_>) -> String {
    match name {
        ModuleExportName::IdentifierName(n) => n.name.to_string(),
        ModuleExportName::IdentifierReference(n) => n.name.to_string(),
        ModuleExportName::StringLiteral(s) => s.value.to_string(),
    }
}

fn is_brigadier(specifier: &str) -> bool {
    BRIGADIER_MODULES.contains(&specifier)
}

/// Whether the sandbox itself provides a module: Brigadier, or one of
/// Node's [`NODE_MODULES`].
fn is_provided(specifier: &str) -> bool {
    is_brigadier(specifier)
        || NODE_MODULES.contains(&specifier.strip_prefix("node:").unwrap_or(specifier))
}

/// Parses a module, finds what it requests and rewrites its ES module
/// syntax (see the module documentation).
fn convert(
    name: &str,
    text: &str,
    source_type: SourceType,
    role: Role,
) -> Result<Converted, BundleError> {
    // The parser recurses on the host's stack (see MAX_NESTING).
    crate::script::check_nesting(name, text)?;
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, text, source_type).parse();
    if let Some(error) = parsed.diagnostics.first() {
        let at = error.labels.first().map_or(0, |l| l.offset());
        let (line, column) = line_and_column(text, at);
        return Err(ScriptProblem::Syntax {
            name: name.into(),
            line,
            column,
            message: error.message.to_string(),
        }
        .into());
    }
    let program = parsed.program;
    let mut requests = Requires { found: vec![] };
    requests.visit_program(&program);
    let mut found = requests.found;
    let is_module = parsed.module_record.has_module_syntax;
    let mut edits = Edits(vec![]);
    let mut prelude = String::new();
    // In the script itself, a rewritten import asks the bundle through the
    // global `require`, naming the (hoisted) table appended after it.
    let require = match role {
        Role::Main => "require.bundled(__mizzen_modules, ",
        Role::Dependency => "require(",
    };
    let default_of = match role {
        Role::Main => "require.interop.d",
        Role::Dependency => "__mz.d",
    };
    if is_module && role == Role::Dependency {
        prelude
            .push_str("\"use strict\";Object.defineProperty(exports,\"__esModule\",{value:true});");
    }
    let getter = |prelude: &mut String, exported: &str, value: &str| {
        prelude.push_str(&format!(
            "__mz.e(exports,{},function(){{return {value}}});",
            serde_json::Value::from(exported)
        ));
    };
    let mut counter = 0usize;
    for statement in &program.body {
        let Some(declaration) = statement.as_module_declaration() else {
            continue;
        };
        match declaration {
            ModuleDeclaration::ImportDeclaration(import) => {
                let specifier = import.source.value.as_str();
                // The script's own imports of Brigadier stay ES imports (the
                // plugin declares that module); a dependency has none left.
                let native = role == Role::Main && is_brigadier(specifier);
                if import.import_kind == ImportOrExportKind::Type || native {
                    continue;
                }
                found.push((specifier.to_string(), import.source.span.start));
                let temp = format!("__mz{counter}");
                counter += 1;
                let quoted = serde_json::Value::from(specifier).to_string();
                let mut code = format!("const {temp} = {require}{quoted})");
                for spec in import.specifiers.iter().flatten() {
                    match spec {
                        ImportDeclarationSpecifier::ImportSpecifier(s) => {
                            if s.import_kind == ImportOrExportKind::Type {
                                continue;
                            }
                            let imported = serde_json::Value::from(export_name(&s.imported));
                            code.push_str(&format!(", {} = {temp}[{imported}]", s.local.name));
                        }
                        ImportDeclarationSpecifier::ImportDefaultSpecifier(s) => {
                            code.push_str(&format!(", {} = {default_of}({temp})", s.local.name));
                        }
                        ImportDeclarationSpecifier::ImportNamespaceSpecifier(s) => {
                            code.push_str(&format!(", {} = {temp}", s.local.name));
                        }
                    }
                }
                code.push(';');
                edits.replace(text, import.span, code);
            }
            _ if role == Role::Main => {}
            ModuleDeclaration::ExportDeclaration(export) => {
                edits.blank(
                    text,
                    Span::new(export.span.start, export.declaration.span().start),
                );
                for local in declared_names(&export.declaration) {
                    getter(&mut prelude, &local, &local);
                }
            }
            ModuleDeclaration::ExportDefaultDeclaration(export) => {
                let start = export.declaration.span().start;
                let named = match &export.declaration {
                    ExportDefaultDeclarationKind::FunctionDeclaration(f) => {
                        f.id.as_ref().map(|id| id.name.to_string())
                    }
                    ExportDefaultDeclarationKind::ClassDeclaration(c) => {
                        c.id.as_ref().map(|id| id.name.to_string())
                    }
                    _ => None,
                };
                let keyword = Span::new(export.span.start, start);
                match named {
                    Some(local) => {
                        edits.blank(text, keyword);
                        getter(&mut prelude, "default", &local);
                    }
                    None => {
                        let width = (start - export.span.start) as usize;
                        edits
                            .0
                            .push((keyword, format!("{:<width$}", "const __mzd =")));
                        getter(&mut prelude, "default", "__mzd");
                    }
                }
            }
            ModuleDeclaration::ExportNamedDeclaration(export) => {
                edits.blank(text, export.span);
                for spec in &export.specifiers {
                    getter(
                        &mut prelude,
                        &export_name(&spec.exported),
                        &export_name(&spec.local),
                    );
                }
            }
            ModuleDeclaration::ExportFromDeclaration(export) => {
                let specifier = export.source.value.as_str();
                found.push((specifier.to_string(), export.source.span.start));
                let quoted = serde_json::Value::from(specifier).to_string();
                edits.replace(text, export.span, format!("require({quoted});"));
                for spec in &export.specifiers {
                    let local = serde_json::Value::from(export_name(&spec.local));
                    getter(
                        &mut prelude,
                        &export_name(&spec.exported),
                        &format!("require({quoted})[{local}]"),
                    );
                }
            }
            ModuleDeclaration::ExportAllDeclaration(export) => {
                let specifier = export.source.value.as_str();
                found.push((specifier.to_string(), export.source.span.start));
                let quoted = serde_json::Value::from(specifier).to_string();
                match &export.exported {
                    Some(name) => {
                        edits.replace(text, export.span, format!("require({quoted});"));
                        getter(
                            &mut prelude,
                            &export_name(name),
                            &format!("require({quoted})"),
                        );
                    }
                    None => {
                        edits.replace(
                            text,
                            export.span,
                            format!("__mz.s(exports, require({quoted}));"),
                        );
                    }
                }
            }
            ModuleDeclaration::TSExportAssignment(_)
            | ModuleDeclaration::TSNamespaceExportDeclaration(_) => {}
        }
    }
    found.retain(|(specifier, _)| !is_provided(specifier));
    found.sort_by_key(|(_, at)| *at);
    let requests = found
        .into_iter()
        .map(|(specifier, at)| Request {
            specifier,
            line: line_and_column(text, at).0,
        })
        .collect();
    Ok(Converted {
        rewritten: !edits.0.is_empty(),
        code: edits.apply(text),
        prelude,
        requests,
    })
}

/// The names a declaration binds (`export const a = 1, {b} = c` binds `a`
/// and `b`).
fn declared_names(declaration: &Declaration<'_>) -> Vec<String> {
    match declaration {
        Declaration::VariableDeclaration(v) => v
            .declarations
            .iter()
            .flat_map(|d| d.id.get_binding_identifiers())
            .map(|id| id.name.to_string())
            .collect(),
        Declaration::FunctionDeclaration(f) => f.id.iter().map(|id| id.name.to_string()).collect(),
        Declaration::ClassDeclaration(c) => c.id.iter().map(|id| id.name.to_string()).collect(),
        // Types are gone once TypeScript is stripped.
        _ => vec![],
    }
}

/// Refuses a cycle among the modules, naming it from the script on.
fn refuse_cycles(
    main: &str,
    main_resolved: &BTreeMap<String, (String, PathBuf)>,
    modules: &[Loaded],
    index: &HashMap<String, usize>,
) -> Result<(), BundleError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; modules.len()];
    // Iterative depth-first search: a chain of thousands of modules must
    // not recurse on the host's stack.
    for (root, _) in main_resolved.values() {
        let start = index[root];
        if marks[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, children(&modules[start], index))];
        marks[start] = Mark::Open;
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match marks[next] {
                    Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let chain: Vec<&str> = std::iter::once(main)
                            .chain(stack[from..].iter().map(|(n, _)| modules[*n].id.as_str()))
                            .chain(std::iter::once(modules[next].id.as_str()))
                            .collect();
                        return Err(BundleError::Cycle(chain.join(" → ")));
                    }
                    Mark::New => {
                        marks[next] = Mark::Open;
                        stack.push((next, children(&modules[next], index)));
                    }
                    Mark::Done => {}
                },
                None => {
                    marks[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

fn children(module: &Loaded, index: &HashMap<String, usize>) -> Vec<usize> {
    let mut ids: Vec<usize> = module.resolved.values().map(|id| index[id]).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.reverse();
    ids
}

/// The text appended after the script: a hoisted function returning the
/// script's own table (specifier → module) and every module's table and
/// factory. Each module's code starts on the line after its header, so its
/// lines are found again by [`ModuleLines`].
fn emit(main_map: &BTreeMap<String, String>, modules: &[Loaded]) -> (String, Vec<ModuleLines>) {
    let json = |v: &BTreeMap<String, String>| serde_json::to_string(v).expect("strings");
    let mut out = format!(
        ";function __mizzen_modules() {{ return [{}, {{\n",
        json(main_map)
    );
    let mut line = 1u32;
    let mut layout = Vec::with_capacity(modules.len());
    for module in modules {
        out.push_str(&format!(
            "{}: [{}, function (exports, require, module, __filename, __dirname, __mz) {{{}\n",
            serde_json::Value::from(module.id.as_str()),
            json(&module.resolved),
            module.converted.prelude
        ));
        line += 1;
        let code = &module.converted.code;
        let lines = code.matches('\n').count() as u32 + 1;
        layout.push(ModuleLines {
            name: module.id.clone(),
            first_line: line + 1,
            lines,
        });
        out.push_str(code);
        out.push_str("\n}],\n");
        line += lines + 1;
    }
    out.push_str("}]; }\n");
    (out, layout)
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: u32) -> (usize, usize) {
    let before = &text[..(offset as usize).min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_modules_listed_are_the_ones_brigadier_js_provides() {
        let sdk = include_str!("../../../guest-sdk/js/brigadier.js");
        let start = sdk
            .find("const nodeModules = {")
            .expect("brigadier.js lists nodeModules");
        let end = start + sdk[start..].find("};").expect("the list ends");
        let names: Vec<String> = sdk[start..end]
            .lines()
            .skip(1)
            .filter_map(|line| line.trim().split(':').next())
            .map(|name| name.trim().trim_matches(['"', ',']).to_string())
            .filter(|name| !name.is_empty())
            .collect();
        assert_eq!(names, NODE_MODULES);
    }

    #[test]
    fn imports_and_exports_keep_their_lines() {
        let text = "import a, { b as c } from './x';\nexport const d = c;\nexport default function () {}\nexport * from './y';\nconsole.log(a);\n";
        let converted = convert("m.js", text, SourceType::unambiguous(), Role::Dependency).unwrap();
        assert_eq!(converted.code.lines().count(), text.lines().count());
        let specifiers: Vec<&str> = converted
            .requests
            .iter()
            .map(|r| r.specifier.as_str())
            .collect();
        assert_eq!(specifiers, ["./x", "./y"]);
        assert_eq!(converted.requests[1].line, 4);
        assert!(converted.code.lines().nth(4).unwrap() == "console.log(a);");
        assert!(converted.prelude.contains("\"d\""), "{}", converted.prelude);
        assert!(
            converted.prelude.contains("\"default\""),
            "{}",
            converted.prelude
        );
    }
}
