//! Environment files: a container's `environmentFile`, `VAR=value` lines
//! read from the project's source or the event's workspace, as `.env` tools
//! write them. The host reads and parses the file before the job starts
//! (so every executor, and a Wasm job, gets the same variables), and the
//! container's own `environment` wins over it.
//!
//! What a line may be: blank; a comment (`# ...`); `VAR=value` with an
//! optional `export ` before it. A value is taken as written (surrounding
//! spaces and a ` # comment` after it dropped), or between single quotes
//! (nothing inside is special), or between double quotes (`\n`, `\t`, `\r`,
//! `\\`, `\"` and `\$` are escapes). A value spans one line, and `${X}` is
//! not expanded: the file is data, never a shell script.

use std::collections::BTreeMap;

/// Where a container's environment file is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvironmentFileRef {
    /// A file of the project's source (`PATH`).
    Source(String),
    /// A file in the event's workspace (`workspace:PATH`).
    Workspace(String),
}

/// The prefix of an environment file in the event's workspace.
pub const WORKSPACE_PREFIX: &str = "workspace:";

/// An environment file's size at most. A job's environment travels in a
/// Kubernetes Secret on a cluster, which holds at most 1 MiB for all of a
/// job's containers, and a process's environment shares `ARG_MAX` (2 MiB
/// on Linux) with its arguments: a quarter of the smaller leaves room for
/// the rest.
pub const MAX_ENVIRONMENT_FILE_BYTES: usize = 256 * 1024;

impl EnvironmentFileRef {
    /// Parses a container's `environmentFile`: a relative path beneath the
    /// source or the workspace, without `..`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let (path, file) = match value.strip_prefix(WORKSPACE_PREFIX) {
            Some(path) => (path, Self::Workspace(path.to_string())),
            None => (value, Self::Source(value.to_string())),
        };
        crate::wasm_job::check_relative_path(path)?;
        Ok(file)
    }

    /// The path as written, for messages.
    pub fn path(&self) -> &str {
        match self {
            Self::Source(path) | Self::Workspace(path) => path,
        }
    }
}

impl std::fmt::Display for EnvironmentFileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Source(path) => write!(f, "{path} (the project's source)"),
            Self::Workspace(path) => write!(f, "{path} (the event's workspace)"),
        }
    }
}

/// Parses an environment file's text; `name` is the file's name for errors,
/// which say `name:line: what is wrong`. A variable set twice takes its
/// last value, as a shell's `source` would.
pub fn parse(name: &str, text: &str) -> Result<BTreeMap<String, String>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut variables = BTreeMap::new();
    for (number, line) in text.split('\n').enumerate() {
        let at = |problem: &str| format!("{name}:{}: {problem}", number + 1);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains('\0') {
            return Err(at(
                "a NUL character; an environment variable cannot hold one",
            ));
        }
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            return Err(at("expected VAR=value"));
        };
        let key = key.trim_end();
        if !is_variable_name(key) {
            return Err(at(&format!(
                "{key:?} is not a variable name (a letter or '_', then letters, digits or '_')"
            )));
        }
        let value = value_of(value.trim_start()).map_err(|problem| at(&problem))?;
        variables.insert(key.to_string(), value);
    }
    Ok(variables)
}

/// POSIX's portable variable names.
fn is_variable_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value as written after `=` (leading spaces already dropped).
fn value_of(raw: &str) -> Result<String, String> {
    let (value, rest) = if let Some(inner) = raw.strip_prefix('\'') {
        let end = inner
            .find('\'')
            .ok_or("a single quote that does not close on its line")?;
        (inner[..end].to_string(), &inner[end + 1..])
    } else if let Some(inner) = raw.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = inner.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("a double quote that does not close on its line".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, c @ ('\\' | '"' | '$'))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err("a double quote that does not close on its line".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        (value, &inner[end + 1..])
    } else {
        // An unquoted value ends at a comment: `#` after a space.
        let end = raw
            .char_indices()
            .find(|&(i, c)| c == '#' && raw[..i].ends_with([' ', '\t']))
            .map_or(raw.len(), |(i, _)| i);
        return Ok(raw[..end].trim_end().to_string());
    };
    let rest = rest.trim_start();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return Err(format!(
            "{rest:?} after the closing quote (only a # comment may follow)"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> BTreeMap<String, String> {
        parse("ci.env", text).unwrap()
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_string(), value.to_string())
    }

    #[test]
    fn lines_comments_export_and_quotes() {
        let text = "\u{feff}# settings\r\n\nA=1\r\nexport B = two words  # a comment\n\
                    C='it is #not a comment'\nD=\"line\\nnext \\\"q\\\" \\$HOME \\x\" # c\n\
                    E=\nF=a#b\nexported=3\n  G = ${A}\n";
        assert_eq!(
            vars(text),
            BTreeMap::from([
                pair("A", "1"),
                pair("B", "two words"),
                pair("C", "it is #not a comment"),
                pair("D", "line\nnext \"q\" $HOME \\x"),
                pair("E", ""),
                pair("F", "a#b"),
                pair("exported", "3"),
                pair("G", "${A}"),
            ])
        );
    }

    #[test]
    fn a_variable_set_twice_takes_its_last_value() {
        assert_eq!(
            vars("A=1\nB=2\nA=3\n"),
            BTreeMap::from([pair("A", "3"), pair("B", "2")])
        );
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        for (text, expected) in [
            ("A=1\nno equals sign\n", "ci.env:2: expected VAR=value"),
            ("A=1\n\n1A=x\n", "ci.env:3: \"1A\" is not a variable name"),
            ("A-B=1", "ci.env:1: \"A-B\" is not a variable name"),
            ("=1", "ci.env:1: \"\" is not a variable name"),
            ("A='open\n", "ci.env:1: a single quote that does not close"),
            (
                "A=\"open\\\"\n",
                "ci.env:1: a double quote that does not close",
            ),
            ("A=\"x\" y\n", "ci.env:1: \"y\" after the closing quote"),
            ("A=1\nB=\0\n", "ci.env:2: a NUL character"),
        ] {
            let error = parse("ci.env", text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn references_are_relative_paths_beneath_the_source_or_the_workspace() {
        assert_eq!(
            EnvironmentFileRef::parse(".env"),
            Ok(EnvironmentFileRef::Source(".env".into()))
        );
        assert_eq!(
            EnvironmentFileRef::parse("workspace:out/ci.env"),
            Ok(EnvironmentFileRef::Workspace("out/ci.env".into()))
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x.env",
            "workspace:a/../../x",
            "workspace:",
        ] {
            assert!(EnvironmentFileRef::parse(bad).is_err(), "{bad}");
        }
    }
}
