//! docs/host-api.md, the document guest authors implement from, checked
//! against host-api so that it cannot fall behind: every operation with its
//! number (its heading and its row of the operations table), every error
//! code, the import names, the op constants of its Rust guest, and every
//! JSON example, parsed with the real types.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use mizzen_host_api::types::{
    ArtifactFileRequest, ArtifactList, Event, ExitRequest, JobLogs, JobLogsRequest, JobRef,
    JobResult, JobStartRequest, LogRequest, ScriptError, SecretRequest, SecretValue, ServiceReady,
    ServiceStartRequest, SleepRequest, SummaryRequest, Ticket, WaitAnyReply, WorkspaceFile,
    WorkspaceListing, WorkspacePath,
};
use mizzen_host_api::{ErrorCode, HostError, Op, abi};

const DOC: &str = "docs/host-api.md";

fn doc() -> String {
    let path = format!("{}/../{DOC}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The text of the `## {title}` section, up to the next `## ` heading.
fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    let heading = format!("\n## {title}\n");
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("{DOC} has no section `## {title}`"));
    let rest = &doc[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// `(name, number)` of each table row of `text` that begins
/// ``| number | `name` |``.
fn numbered_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix('|')?.split('|').map(str::trim);
            let number = cells.next()?;
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            number
                .chars()
                .all(|c| c.is_ascii_digit())
                .then(|| (name.to_string(), number.to_string()))
        })
        .collect()
}

/// `(name, number)` of each operation heading: ``### `name` (number)``.
fn op_headings(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("### `")?;
            let (name, rest) = rest.split_once('`')?;
            let number = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some((name.to_string(), number.to_string()))
        })
        .collect()
}

/// Every disagreement between what `place` says (`name`, number) and
/// `expected` (name, number, where host-api defines it).
fn disagreements(
    place: &str,
    found: &[(String, String)],
    expected: &[(String, u32, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, number, source) in expected {
        let said: Vec<&String> = found
            .iter()
            .filter(|(entry, _)| entry == name)
            .map(|(_, n)| n)
            .collect();
        match said.as_slice() {
            [] => problems.push(format!(
                "{name}: {place} does not have it; {source} is {number}"
            )),
            [one] if **one != number.to_string() => {
                problems.push(format!("{name}: {place} says {one}, {source} is {number}"))
            }
            [_] => {}
            _ => problems.push(format!("{name}: {place} has it {} times", said.len())),
        }
    }
    for (name, number) in found {
        if !expected.iter().any(|(entry, _, _)| entry == name) {
            problems.push(format!(
                "{place} has `{name}` ({number}), which host-api does not define"
            ));
        }
    }
    problems
}

fn operations() -> Vec<(String, u32, String)> {
    Op::ALL
        .iter()
        .map(|op| {
            let source = format!("Op::{op:?} in host-api/src/op.rs");
            (op.name().to_string(), *op as u32, source)
        })
        .collect()
}

fn error_codes() -> Vec<(String, u32, String)> {
    (0..=u16::MAX.into())
        .filter_map(ErrorCode::from_u32)
        .map(|code| {
            let name = serde_json::to_value(code).expect("codes serialise");
            let name = name.as_str().expect("codes are strings").to_string();
            let source = format!("ErrorCode::{code:?} in host-api/src/error.rs");
            (name, code as u32, source)
        })
        .collect()
}

/// The code blocks of `doc`: their info string (`json Event`) and text.
fn code_blocks(doc: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|line| line.trim_start() != "```")
            .collect();
        blocks.push((info.trim().to_string(), body.join("\n")));
    }
    blocks
}

/// Whether `json` is a `T`. A reply's example must be exactly what the host
/// would send for it; a request's may leave out what has a default (the
/// types refuse unknown fields, so a misspelt one fails).
fn parses_as<T: DeserializeOwned + Serialize>(json: &str, reply: bool) -> Result<(), String> {
    let value: T = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if reply {
        let example: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let sent = serde_json::to_value(&value).map_err(|e| e.to_string())?;
        if sent != example {
            return Err(format!("the host would send {sent}"));
        }
    }
    Ok(())
}

const REPLY: bool = true;
const REQUEST: bool = false;

fn check_example(type_name: &str, json: &str) -> Result<(), String> {
    match type_name {
        "Event" => parses_as::<Event>(json, REPLY),
        "LogRequest" => parses_as::<LogRequest>(json, REQUEST),
        "SummaryRequest" => parses_as::<SummaryRequest>(json, REQUEST),
        "ExitRequest" => parses_as::<ExitRequest>(json, REQUEST),
        "ScriptError" => parses_as::<ScriptError>(json, REQUEST),
        "SecretRequest" => parses_as::<SecretRequest>(json, REQUEST),
        "SecretValue" => parses_as::<SecretValue>(json, REPLY),
        "JobStartRequest" => parses_as::<JobStartRequest>(json, REQUEST),
        "JobRef" => parses_as::<JobRef>(json, REQUEST),
        "JobResult" => parses_as::<JobResult>(json, REPLY),
        "JobLogsRequest" => parses_as::<JobLogsRequest>(json, REQUEST),
        "JobLogs" => parses_as::<JobLogs>(json, REPLY),
        "ServiceStartRequest" => parses_as::<ServiceStartRequest>(json, REQUEST),
        "ServiceReady" => parses_as::<ServiceReady>(json, REPLY),
        "SleepRequest" => parses_as::<SleepRequest>(json, REQUEST),
        // A reply of sleep, job.wait and job.logs, and the request of
        // ticket.cancel: both ways, exactly.
        "Ticket" => parses_as::<Ticket>(json, REPLY),
        "WaitAnyReply" => parses_as::<WaitAnyReply>(json, REPLY),
        "WorkspacePath" => parses_as::<WorkspacePath>(json, REQUEST),
        // The reply of workspace.read and the request of workspace.write.
        "WorkspaceFile" => parses_as::<WorkspaceFile>(json, REPLY),
        "WorkspaceListing" => parses_as::<WorkspaceListing>(json, REPLY),
        "ArtifactList" => parses_as::<ArtifactList>(json, REPLY),
        "ArtifactFileRequest" => parses_as::<ArtifactFileRequest>(json, REQUEST),
        "HostError" => parses_as::<HostError>(json, REPLY),
        other => Err(format!(
            "`{other}` is not a type of host-api this test knows (add it to check_example)"
        )),
    }
}

#[test]
fn every_operation_has_its_heading_with_its_number() {
    let problems = disagreements(
        &format!("{DOC}'s `### `name` (number)` heading"),
        &op_headings(&doc()),
        &operations(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_operation_is_in_the_operations_table_with_its_number() {
    let doc = doc();
    let problems = disagreements(
        &format!("{DOC}'s operations table"),
        &numbered_rows(section(&doc, "Operations")),
        &operations(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_error_code_is_in_the_errors_table_with_its_number() {
    let doc = doc();
    let problems = disagreements(
        &format!("{DOC}'s errors table"),
        &numbered_rows(section(&doc, "Errors")),
        &error_codes(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_imports_are_named_as_the_abi_names_them() {
    let doc = doc();
    for function in [abi::CALL, abi::TAKE_REPLY] {
        let import = format!(r#"(import "{}" "{function}""#, abi::IMPORT_MODULE);
        assert!(doc.contains(&import), "{DOC} must show {import} ...)");
    }
}

#[test]
fn every_json_example_parses_as_the_type_it_names() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (info, body) in code_blocks(&doc()) {
        let Some(type_name) = info.strip_prefix("json") else {
            continue;
        };
        let type_name = type_name.trim();
        if type_name.is_empty() {
            problems.push(format!(
                "a json example does not name its type (```json Type):\n{body}"
            ));
            continue;
        }
        checked += 1;
        if let Err(e) = check_example(type_name, &body) {
            problems.push(format!("{type_name} example: {e}\n{body}"));
        }
    }
    assert!(problems.is_empty(), "{DOC}:\n{}", problems.join("\n\n"));
    // Each operation shows at least its request or its reply.
    assert!(checked >= 20, "only {checked} JSON examples were found");
}

#[test]
fn the_rust_guests_op_constants_are_the_operations_numbers() {
    let mut problems = Vec::new();
    for (info, body) in code_blocks(&doc()) {
        if info != "rust" {
            continue;
        }
        for line in body.lines() {
            let Some((name, number)) = line
                .trim()
                .strip_prefix("const ")
                .and_then(|rest| rest.split_once(": u32 ="))
            else {
                continue;
            };
            let number = number.trim().trim_end_matches(';');
            let op = Op::ALL.into_iter().find(|op| {
                let name_of_op = op.name().replace('.', "_").to_ascii_uppercase();
                name_of_op == name.trim()
            });
            match op {
                Some(op) if number == (op as u32).to_string() => {}
                Some(op) => problems.push(format!(
                    "{DOC}'s Rust guest has {name} = {number}, Op::{op:?} in host-api/src/op.rs is {}",
                    op as u32
                )),
                None => problems.push(format!(
                    "{DOC}'s Rust guest has {name}, which names no operation"
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
