//! Scripts: what a project runs, and how its source becomes JavaScript the
//! plugin compiles.
//!
//! JavaScript is checked with oxc's parser, which also tells CommonJS
//! (`require`) from ES modules (`import`). TypeScript has its types stripped
//! by oxc's transformer (as Brigade's worker ran `tsc`, but without type
//! checking: a type error does not fail the run, a syntax error does). A
//! source map takes TypeScript error positions back to the `.ts` file.

use std::path::Path;
use std::sync::Arc;

use oxc_allocator::Allocator;
use oxc_codegen::{Codegen, CodegenOptions};
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};
use sha2::{Digest, Sha256};

/// Brigade scripts are kilobytes; a bundled script with its dependencies may
/// reach a few megabytes. Anything larger is refused before it is parsed, so
/// that compilation time and memory stay bounded.
pub const MAX_SCRIPT_BYTES: usize = 8 * 1024 * 1024;

/// Brackets, parentheses and braces open at once. The parser and the
/// TypeScript transform descend recursively on the host's stack (a server
/// compiles on its 2 MiB runtime threads), and 10,000 levels overflowed it,
/// killing the process with every tenant's workers; QuickJS's own compiler
/// gives up near 1,000 levels anyway. No honest script nests past a few dozen.
pub const MAX_NESTING: usize = 500;

/// The language of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Language {
    /// `brigade.js`.
    JavaScript,
    /// `brigade.ts`.
    TypeScript,
    /// `brigade.wasm`: a wasm32-wasip1 module compiled from any language
    /// (see [`crate::module`]).
    Wasm,
}

/// A script's key: the SHA-256 of its language, name and code. Compiled
/// scripts are cached by it, and a sandbox process is sent a script once
/// and then told its key.
pub type ScriptKey = [u8; 32];

/// A script to run: its file name (used in error locations) and its code.
/// Cloning shares the code: a module is megabytes, and a server hands its
/// project's script to every event.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScriptSource {
    name: String,
    language: Language,
    code: Arc<[u8]>,
    /// Computed once, when the script is made: hashing a module costs
    /// milliseconds, and its key is asked for on every event. (A sandbox
    /// process trusts the key its parent sends with the script.)
    key: ScriptKey,
    /// For a script bundled with its modules: where each module is.
    bundle: Option<Arc<BundleLayout>>,
}

/// Where a bundled script's modules are (see [`crate::bundle`]): the script's
/// own text is the first `main_bytes` bytes; the modules follow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BundleLayout {
    /// The length of the script's own text.
    pub main_bytes: usize,
    /// The modules, in the order of their lines.
    pub modules: Vec<ModuleLines>,
}

/// The lines of one module in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModuleLines {
    /// Its id (its path in the config files directory, or under
    /// `node_modules/`).
    pub name: String,
    /// Its first line, counted (from 1) in the text after the script's own.
    pub first_line: u32,
    /// How many lines it has.
    pub lines: u32,
}

impl std::fmt::Debug for ScriptSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptSource")
            .field("name", &self.name)
            .field("language", &self.language)
            .field("bytes", &self.code.len())
            .finish()
    }
}

impl ScriptSource {
    /// A script whose language follows its name's extension (`.ts` is
    /// TypeScript, anything else JavaScript).
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let name = name.into();
        let language = if name.ends_with(".ts") {
            Language::TypeScript
        } else {
            Language::JavaScript
        };
        Self::with(name, language, text.into().into_bytes().into())
    }

    /// A compiled module (`brigade.wasm`).
    pub fn module(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        Self::with(name.into(), Language::Wasm, bytes.into())
    }

    /// A script bundled with its modules (made by [`crate::bundle`]).
    pub(crate) fn bundled(
        name: &str,
        language: Language,
        code: String,
        layout: BundleLayout,
    ) -> Self {
        let mut script = Self::with(name.into(), language, code.into_bytes().into());
        script.bundle = Some(Arc::new(layout));
        script
    }

    /// Whether the script was bundled with modules.
    pub fn is_bundle(&self) -> bool {
        self.bundle.is_some()
    }

    fn with(name: String, language: Language, code: Arc<[u8]>) -> Self {
        let mut hash = Sha256::new();
        hash.update([match language {
            Language::JavaScript => b'j',
            Language::TypeScript => b't',
            Language::Wasm => b'w',
        }]);
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update(&code);
        let key = hash.finalize().into();
        Self {
            name,
            language,
            code,
            key,
            bundle: None,
        }
    }

    /// The file name, e.g. `brigade.js`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// JavaScript, TypeScript or a compiled module.
    pub fn language(&self) -> Language {
        self.language
    }

    /// The source text (UTF-8) of a script, or the bytes of a module.
    pub fn code(&self) -> &Arc<[u8]> {
        &self.code
    }

    /// The script's key: the hash of its language, name and code.
    pub fn key(&self) -> ScriptKey {
        self.key
    }
}

/// How the plugin loads a script (the numbers are the plugin's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScriptKind {
    /// Wrapped in a function like Node's CommonJS modules.
    CommonJs = 0,
    /// An ES module.
    Module = 1,
}

/// A script ready for the plugin's compiler.
#[derive(Debug, Clone)]
pub(crate) struct PreparedScript {
    pub name: String,
    pub javascript: String,
    pub kind: ScriptKind,
    /// For TypeScript: generated positions back to the `.ts` file.
    pub positions: Option<PositionMap>,
}

/// Why a script cannot run, with the file, line and column where it can say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptProblem {
    /// Larger than [`MAX_SCRIPT_BYTES`].
    #[error("{name}: the script is {bytes} bytes; the limit is {MAX_SCRIPT_BYTES} bytes")]
    TooLarge {
        /// The script's file name.
        name: String,
        /// Its size.
        bytes: usize,
    },
    /// A script whose bytes are not UTF-8.
    #[error("{name}: the script is not UTF-8 text (invalid bytes at offset {offset})")]
    NotText {
        /// The script's file name.
        name: String,
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// Brackets nested past [`MAX_NESTING`].
    #[error("{name}:{line}:{column}: SyntaxError: brackets nested more than {MAX_NESTING} deep")]
    TooDeep {
        /// The script's file name.
        name: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// The parser's first complaint.
    #[error("{name}:{line}:{column}: SyntaxError: {message}")]
    Syntax {
        /// The script's file name.
        name: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
        /// What.
        message: String,
    },
    /// What stripping TypeScript's types could not do.
    #[error("{name}:{line}:{column}: {message}")]
    TypeScript {
        /// The script's file name.
        name: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
        /// What.
        message: String,
    },
}

/// Refuses a script that opens more than [`MAX_NESTING`] brackets at once,
/// before the parser recurses into them. Brackets in strings and comments
/// count too: the check only needs to be cheap and never to let a deep
/// script through.
pub(crate) fn check_nesting(name: &str, text: &str) -> Result<(), ScriptProblem> {
    let mut depth = 0usize;
    let (mut line, mut column) = (1, 1);
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ScriptProblem::TooDeep {
                        name: name.into(),
                        line,
                        column,
                    });
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == '\n' {
            (line, column) = (line + 1, 1);
        } else {
            column += 1;
        }
    }
    Ok(())
}

/// Parses (and for TypeScript, transpiles) a script. Errors read
/// `brigade.ts:3:7: SyntaxError: Expected ...`.
pub(crate) fn prepare(source: &ScriptSource) -> Result<PreparedScript, ScriptProblem> {
    if source.code.len() > MAX_SCRIPT_BYTES {
        return Err(ScriptProblem::TooLarge {
            name: source.name.clone(),
            bytes: source.code.len(),
        });
    }
    let text = std::str::from_utf8(&source.code).map_err(|e| ScriptProblem::NotText {
        name: source.name.clone(),
        offset: e.valid_up_to(),
    })?;
    // A bundle's modules were checked when it was made; only the script's
    // own text is parsed (and for TypeScript, stripped) here.
    let (text, appended) = match &source.bundle {
        Some(layout) => text.split_at(layout.main_bytes.min(text.len())),
        None => (text, ""),
    };
    check_nesting(&source.name, text)?;
    let allocator = Allocator::default();
    let source_type = match source.language {
        Language::JavaScript => SourceType::unambiguous(),
        Language::TypeScript => SourceType::ts().with_unambiguous(true),
        Language::Wasm => unreachable!("modules are compiled by crate::module, not prepared"),
    };
    let parsed = Parser::new(&allocator, text, source_type).parse();
    if let Some(error) = parsed.diagnostics.first() {
        let at = error
            .labels
            .first()
            .map_or(0, |label| label.offset() as usize);
        let (line, column) = line_and_column(text, at);
        return Err(ScriptProblem::Syntax {
            name: source.name.clone(),
            line,
            column,
            message: error.message.to_string(),
        });
    }
    let kind = if parsed.module_record.has_module_syntax {
        ScriptKind::Module
    } else {
        ScriptKind::CommonJs
    };
    let bundled = |javascript: String, tokens: Vec<(u32, u32, u32, u32)>| {
        let bundle = source.bundle.as_ref().map(|layout| BundlePositions {
            main_lines: javascript.matches('\n').count() as u32 + 1,
            layout: layout.clone(),
        });
        let positions =
            (bundle.is_some() || !tokens.is_empty()).then_some(PositionMap { tokens, bundle });
        PreparedScript {
            name: source.name.clone(),
            javascript: javascript + appended,
            kind,
            positions,
        }
    };
    if source.language == Language::JavaScript {
        return Ok(bundled(text.to_string(), vec![]));
    }

    let mut program = parsed.program;
    let scoping = SemanticBuilder::new()
        .build(&program)
        .semantic
        .into_scoping();
    let transformed = Transformer::new(
        &allocator,
        Path::new(&source.name),
        &TransformOptions::default(),
    )
    .build_with_scoping(scoping, &mut program);
    if let Some(error) = transformed.diagnostics.first() {
        let at = error
            .labels
            .first()
            .map_or(0, |label| label.offset() as usize);
        let (line, column) = line_and_column(text, at);
        return Err(ScriptProblem::TypeScript {
            name: source.name.clone(),
            line,
            column,
            message: error.message.to_string(),
        });
    }
    let generated = Codegen::new()
        .with_options(CodegenOptions {
            source_map_path: Some(Path::new(&source.name).to_path_buf()),
            ..CodegenOptions::default()
        })
        .with_source_text(text)
        .build(&program);
    let tokens = generated.map.map_or_else(Vec::new, |map| {
        map.get_tokens()
            .map(|t| {
                (
                    t.get_dst_line(),
                    t.get_dst_col(),
                    t.get_src_line(),
                    t.get_src_col(),
                )
            })
            .collect()
    });
    Ok(bundled(generated.code, tokens))
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Maps positions in transpiled JavaScript back to the TypeScript source,
/// and positions in a bundle's modules back to their files.
#[derive(Debug, Clone, Default)]
pub(crate) struct PositionMap {
    /// (generated line, generated column, source line, source column), all
    /// 0-based, sorted by generated position; empty for JavaScript.
    tokens: Vec<(u32, u32, u32, u32)>,
    bundle: Option<BundlePositions>,
}

/// Where a bundle's modules start in the JavaScript the plugin compiles.
#[derive(Debug, Clone)]
struct BundlePositions {
    /// Lines of the script's own (generated) JavaScript.
    main_lines: u32,
    layout: Arc<BundleLayout>,
}

impl BundlePositions {
    /// The module and its own line at a line of the bundle (1-based).
    fn module_at(&self, line: u32) -> Option<(&str, u32)> {
        let relative = line.checked_sub(self.main_lines)?;
        let modules = &self.layout.modules;
        let index = modules
            .partition_point(|m| m.first_line <= relative)
            .checked_sub(1)?;
        let module = &modules[index];
        let own = relative - module.first_line + 1;
        (own <= module.lines).then_some((module.name.as_str(), own))
    }
}

impl PositionMap {
    /// The source position (1-based) of a generated position (1-based).
    fn lookup(&self, line: u32, column: u32) -> Option<(u32, u32)> {
        let key = (line.checked_sub(1)?, column.saturating_sub(1));
        let index = self
            .tokens
            .partition_point(|(l, c, _, _)| (*l, *c) <= key)
            .checked_sub(1)?;
        let (gen_line, _, src_line, src_col) = self.tokens[index];
        (gen_line == key.0).then_some((src_line + 1, src_col + 1))
    }

    /// Rewrites every `name:line:col` in `text` to the source position: in
    /// a bundle's module, `module:line:col`.
    pub fn rewrite(&self, name: &str, text: &str) -> String {
        let needle = format!("{name}:");
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            let after = &rest[at + needle.len()..];
            out.push_str(&rest[..at]);
            let digits = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            let line: Option<u32> = after[..digits].parse().ok();
            let in_module = line.and_then(|line| self.bundle.as_ref()?.module_at(line));
            if let Some((module, own)) = in_module {
                out.push_str(&format!("{module}:{own}"));
                rest = &after[digits..];
                continue;
            }
            out.push_str(&needle);
            let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let line_len = digits(after);
            let col_start = line_len + 1;
            let col_len = after
                .get(col_start..)
                .filter(|_| after[line_len..].starts_with(':'))
                .map_or(0, digits);
            let mapped = (line_len > 0 && col_len > 0)
                .then(|| {
                    let line = after[..line_len].parse().ok()?;
                    let col = after[col_start..col_start + col_len].parse().ok()?;
                    self.lookup(line, col)
                })
                .flatten();
            match mapped {
                Some((line, col)) => {
                    out.push_str(&format!("{line}:{col}"));
                    rest = &after[col_start + col_len..];
                }
                None => rest = after,
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_scripts_are_commonjs_and_imports_are_modules() {
        let cjs = prepare(&ScriptSource::new(
            "brigade.js",
            "const { events } = require(\"brigadier\");",
        ))
        .unwrap();
        assert_eq!(cjs.kind, ScriptKind::CommonJs);
        let esm = prepare(&ScriptSource::new(
            "brigade.js",
            "import { events } from \"brigadier\";",
        ))
        .unwrap();
        assert_eq!(esm.kind, ScriptKind::Module);
    }

    #[test]
    fn typescript_loses_its_types_and_keeps_its_code() {
        let ts = prepare(&ScriptSource::new(
            "brigade.ts",
            "const greeting: string = \"hi\";\ninterface X { a: number }\nconsole.log(greeting as string);\n",
        ))
        .unwrap();
        assert!(!ts.javascript.contains(": string"), "{}", ts.javascript);
        assert!(!ts.javascript.contains("interface"), "{}", ts.javascript);
        assert!(
            ts.javascript.contains("console.log(greeting)"),
            "{}",
            ts.javascript
        );
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let err = prepare(&ScriptSource::new("brigade.ts", "let a = 1;\nlet b = (;\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("brigade.ts:2:"), "{err}");
        assert!(err.contains("SyntaxError"), "{err}");
        let err = prepare(&ScriptSource::new("brigade.js", "\n\nfunction (\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("brigade.js:3:"), "{err}");
    }

    #[test]
    fn typescript_positions_map_back_to_the_source() {
        let source = "type A = {\n  x: number;\n};\n\n\nthrow new Error(\"boom\");\n";
        let ts = prepare(&ScriptSource::new("brigade.ts", source)).unwrap();
        let generated_line = ts
            .javascript
            .lines()
            .position(|l| l.contains("throw"))
            .unwrap()
            + 1;
        let positions = ts.positions.unwrap();
        let text = format!("at brigade.ts:{generated_line}:1)");
        assert_eq!(positions.rewrite("brigade.ts", &text), "at brigade.ts:6:1)");
        assert_eq!(
            positions.rewrite("brigade.ts", "brigade.ts:x"),
            "brigade.ts:x"
        );
    }

    #[test]
    fn oversized_scripts_are_refused_before_parsing() {
        let text = "x".repeat(MAX_SCRIPT_BYTES + 1);
        let err = prepare(&ScriptSource::new("brigade.js", text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit"), "{err}");
    }

    #[test]
    fn brackets_nested_past_the_limit_are_refused_with_their_position() {
        let deep = format!(
            "const a = 1;\nconst b = {}{};\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = prepare(&ScriptSource::new("brigade.js", deep))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "brigade.js:2:511: SyntaxError: brackets nested more than 500 deep"
        );
        let fine = format!(
            "const b = {}{};\n",
            "[".repeat(MAX_NESTING),
            "]".repeat(MAX_NESTING)
        );
        assert!(prepare(&ScriptSource::new("brigade.js", fine)).is_ok());
    }
}
