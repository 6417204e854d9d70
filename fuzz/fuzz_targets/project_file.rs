//! Any text as a project file: parsing and validation end in a project or
//! an error that names the file, never in a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mizzen_runtime::project::Project;

fuzz_target!(|text: &str| {
    if let Err(e) = Project::parse(Path::new("fuzz/project.yaml"), text) {
        let message = e.to_string();
        assert!(
            message.contains("fuzz/project.yaml"),
            "the error does not name the file: {message}"
        );
    }
});
