//! Builds the pod helper (helper/mizzen-pause.c) as a static Linux
//! executable, to be embedded in the executor and imported as an image.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=helper/mizzen-pause.c");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let binary = out.join("mizzen-pause");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        // Containers of a local engine are Linux processes; on other hosts
        // the helper cannot be built here, and jobs with sidecars say so.
        std::fs::write(&binary, b"").expect("OUT_DIR is writable");
        return;
    }
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg("helper/mizzen-pause.c")
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the C compiler {}: {e}",
                compiler.path().display()
            )
        });
    assert!(
        status.success(),
        "building the pod helper failed ({status}); it needs a C compiler that can link statically \
         (on Debian or Ubuntu: apt-get install build-essential)"
    );
}
