//! The op-code agreement test. host-api's `Op` is the one definition of the
//! operations; its numbers are written once, in `host-api/src/op_codes.rs`,
//! which `Op` and the Javy plugin both compile. What is not compiled from it
//! is checked here against `Op::ALL`, by name and number: brigadier.js's `OP`
//! table, the constants' names, and that neither guest calls the host with a
//! bare number or with an operation the table lacks. A failure names the
//! operation, the file and both values.

use std::collections::BTreeMap;

use mizzen_host_api::{Op, abi};

const BRIGADIER_JS: &str = "guest-sdk/js/brigadier.js";
const OP_CODES_RS: &str = "host-api/src/op_codes.rs";
const PLUGIN_RS: &str = "guest-sdk/javy-plugin/src/lib.rs";
const PLUGIN_BUILD: &str = "guest-sdk/javy-plugin/build.sh";

fn read(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// The op's name in brigadier.js's table: its Rust name (`WaitAny`).
fn js_name(op: Op) -> String {
    format!("{op:?}")
}

/// The op's constant in op_codes.rs: its Rust name in upper snake case
/// (`WAIT_ANY`).
fn const_name(op: Op) -> String {
    let mut name = String::new();
    for (i, c) in js_name(op).chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// `text` without `//` comments (neither file has `//` inside a string
/// where these tests look).
fn without_line_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The entries of brigadier.js's `const OP = { Name: number, ... };`.
fn brigadier_table(source: &str) -> Result<Vec<(String, String)>, String> {
    let start = source
        .find("const OP = {")
        .ok_or_else(|| format!("{BRIGADIER_JS} has no `const OP = {{` table"))?;
    let body = &source[start + "const OP = {".len()..];
    let end = body
        .find("};")
        .ok_or_else(|| format!("{BRIGADIER_JS}: the `OP` table does not end with `}};`"))?;
    without_line_comments(&body[..end])
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry.split_once(':') {
            Some((name, number)) => Ok((name.trim().to_string(), number.trim().to_string())),
            None => Err(format!(
                "{BRIGADIER_JS}: the `OP` entry {entry:?} is not `Name: number`"
            )),
        })
        .collect()
}

/// The `pub const NAME: u32 = number;` items of op_codes.rs.
fn op_code_constants(source: &str) -> Vec<(String, String)> {
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(':')?;
            let number = rest.split_once('=')?.1.trim().trim_end_matches(';');
            Some((name.trim().to_string(), number.trim().to_string()))
        })
        .collect()
}

/// Every disagreement between `found` (a file's `name = number` entries)
/// and host-api's operations, named as `name` names them; empty when they
/// agree.
fn disagreements(file: &str, found: &[(String, String)], name: fn(Op) -> String) -> Vec<String> {
    let mut problems = Vec::new();
    let mut entries: BTreeMap<&str, &str> = BTreeMap::new();
    for (entry, number) in found {
        if entries.insert(entry, number).is_some() {
            problems.push(format!("{file} lists {entry} twice"));
        }
    }
    for op in Op::ALL {
        let (entry, number) = (name(op), op as u32);
        let host = format!("Op::{op:?} in host-api/src/op.rs is {number}");
        match entries.remove(entry.as_str()) {
            None => problems.push(format!(
                "op {entry} ({}): {file} does not have it; {host}",
                op.name()
            )),
            Some(found) if found != number.to_string() => problems.push(format!(
                "op {entry} ({}): {file} has {found}, {host}",
                op.name()
            )),
            Some(_) => {}
        }
    }
    for (entry, found) in entries {
        problems.push(format!(
            "{file} has {entry} = {found}, which is no operation of host-api's Op"
        ));
    }
    problems
}

/// The first argument of every call of `callee` in `source` (not of its
/// definition, nor of a method of the same name, as `x.call(...)` is for
/// brigadier.js's `call`), with its line number.
fn first_arguments(source: &str, callee: &str) -> Vec<(usize, String)> {
    let pattern = format!("{callee}(");
    let mut found = Vec::new();
    for (at, _) in source.match_indices(&pattern) {
        let before = &source[..at];
        let previous = before.chars().next_back();
        let part_of_a_longer_name =
            previous.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == ':');
        let definition = before.ends_with("fn ") || before.ends_with("function ");
        if part_of_a_longer_name || definition {
            continue;
        }
        let after = &source[at + pattern.len()..];
        let end = after.find([',', ')']).unwrap_or(after.len());
        let line = before.matches('\n').count() + 1;
        found.push((line, after[..end].trim().to_string()));
    }
    found
}

#[test]
fn brigadier_js_has_every_op_with_its_number() {
    let table = brigadier_table(&read(BRIGADIER_JS)).unwrap_or_else(|e| panic!("{e}"));
    let problems = disagreements(BRIGADIER_JS, &table, js_name);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn op_codes_rs_names_every_op_by_its_number() {
    // `Op`'s discriminants are these constants, so the numbers agree by
    // construction; this catches a variant bound to another op's constant,
    // and constants no variant uses.
    let constants = op_code_constants(&read(OP_CODES_RS));
    let problems = disagreements(OP_CODES_RS, &constants, const_name);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn brigadier_js_calls_the_host_only_through_its_table() {
    let source = read(BRIGADIER_JS);
    let table = brigadier_table(&source).unwrap_or_else(|e| panic!("{e}"));
    let source = without_line_comments(&source);
    let known = |name: &str| table.iter().any(|(entry, _)| entry == name);
    let mut problems = Vec::new();
    // `call` and `submit` are its wrappers of `host.call`; `op` is their
    // parameter, passed on.
    for callee in ["host.call", "call", "submit"] {
        for (line, argument) in first_arguments(&source, callee) {
            let named = argument.strip_prefix("OP.").is_some_and(known);
            if !(named || argument == "op") {
                problems.push(format!(
                    "{BRIGADIER_JS}:{line}: {callee}({argument}, ...) does not name an op of the `OP` table"
                ));
            }
        }
    }
    for (at, _) in source.match_indices("OP.") {
        let name: String = source[at + 3..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if !known(&name) {
            let line = source[..at].matches('\n').count() + 1;
            problems.push(format!(
                "{BRIGADIER_JS}:{line}: OP.{name} is not in the `OP` table"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_plugin_takes_its_op_codes_from_host_api() {
    let source = read(PLUGIN_RS);
    let include = r#"include!("../../../host-api/src/op_codes.rs")"#;
    assert!(
        source.contains(include),
        "{PLUGIN_RS} must take its op codes from {OP_CODES_RS} with {include}"
    );
    let constants = op_code_constants(&read(OP_CODES_RS));
    let mut problems = Vec::new();
    for callee in ["host_call", "host::call"] {
        for (line, argument) in first_arguments(&without_line_comments(&source), callee) {
            let named = argument
                .strip_prefix("op::")
                .is_some_and(|name| constants.iter().any(|(constant, _)| constant == name));
            if !(named || argument == "op") {
                problems.push(format!(
                    "{PLUGIN_RS}:{line}: {callee}({argument}, ...) must name its operation as op::NAME from {OP_CODES_RS}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let import = format!(r#"wasm_import_module = "{}""#, abi::IMPORT_MODULE);
    assert!(
        source.contains(&import),
        "{PLUGIN_RS} must import the host's functions from {}",
        abi::IMPORT_MODULE
    );
    // A change of the op codes must make `build.sh --check` see a stale
    // plugin.
    let build = read(PLUGIN_BUILD);
    let inputs = build
        .split("inputs=(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("{PLUGIN_BUILD} has no `inputs=(...)` list"));
    assert!(
        inputs.lines().any(|line| line.trim() == OP_CODES_RS),
        "{PLUGIN_BUILD}'s inputs must list {OP_CODES_RS}, which the plugin compiles"
    );
}

#[test]
fn the_checks_catch_a_wrong_number_a_missing_op_and_a_stray_entry() {
    let mut table: Vec<(String, String)> = Op::ALL
        .iter()
        .map(|op| (js_name(*op), (*op as u32).to_string()))
        .collect();
    assert!(disagreements("t.js", &table, js_name).is_empty());
    table.retain(|(name, _)| name != "Log");
    table
        .iter_mut()
        .find(|(name, _)| name == "Sleep")
        .unwrap()
        .1 = "21".into();
    table.push(("Teleport".into(), "99".into()));
    assert_eq!(
        disagreements("t.js", &table, js_name),
        [
            "op Log (log): t.js does not have it; Op::Log in host-api/src/op.rs is 2",
            "op Sleep (sleep): t.js has 21, Op::Sleep in host-api/src/op.rs is 20",
            "t.js has Teleport = 99, which is no operation of host-api's Op",
        ]
    );
    let calls = first_arguments(
        "function call(op, r) {}\ncall(OP.Log, {});\nx.call(1);\nhost_call(5, b);\n",
        "call",
    );
    assert_eq!(calls, [(2, "OP.Log".to_string())]);
    assert_eq!(const_name(Op::WorkspaceRemove), "WORKSPACE_REMOVE");
}

/// The names between `open` and the next `close` in `source`, one per
/// comma-separated entry (`name` or `name: value`, quotes dropped).
fn names_in(source: &str, open: &str, close: &str) -> Vec<String> {
    let start = source
        .find(open)
        .unwrap_or_else(|| panic!("no `{open}` found"))
        + open.len();
    let body = &source[start..];
    let end = body
        .find(close)
        .unwrap_or_else(|| panic!("`{open}` does not end with `{close}`"));
    let mut names: Vec<String> = without_line_comments(&body[..end])
        .split(',')
        .map(|entry| {
            entry
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names
}

/// An `import { name } from "@brigadecore/brigadier"` finds every name the
/// library has: the plugin's ES module exports exactly brigadier.js's
/// object (`workspace` was missing, so a TypeScript script importing it
/// failed to load).
#[test]
fn the_es_module_exports_every_name_of_the_library() {
    let library = names_in(
        &read(BRIGADIER_JS),
        "const brigadier = Object.freeze({",
        "});",
    );
    let plugin = read(PLUGIN_RS);
    let table = &plugin[plugin
        .find("const MODULE_EXPORTS")
        .expect("the plugin has MODULE_EXPORTS")..];
    let exports = names_in(table, "] = [", "];");
    assert_eq!(
        exports, library,
        "{PLUGIN_RS}'s MODULE_EXPORTS and the object {BRIGADIER_JS} returns differ"
    );
}

/// The `opName = number` entries of the Go SDK's `const ( ... )` block
/// after its "operation numbers" comment.
fn go_table(source: &str) -> Vec<(String, String)> {
    let start = source
        .find("// The operation numbers of host-api/src/op_codes.rs.")
        .unwrap_or_else(|| panic!("{GO_HOST} has lost its operation numbers' comment"));
    let body = &source[start..];
    let body = &body[body.find("const (").expect("a const block") + "const (".len()..];
    let body = &body[..body.find(')').expect("the block ends")];
    without_line_comments(body)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, number)| {
            let name = name.trim().strip_prefix("op").unwrap_or(name.trim());
            (name.to_string(), number.trim().to_string())
        })
        .collect()
}

const GO_HOST: &str = "guest-sdk/go/host.go";

/// The Go SDK repeats the numbers (Go cannot include a Rust file): they must
/// be host-api's, every one of them.
#[test]
fn the_go_sdk_has_every_op_with_its_number() {
    let table = go_table(&read(GO_HOST));
    let problems = disagreements(GO_HOST, &table, js_name);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
