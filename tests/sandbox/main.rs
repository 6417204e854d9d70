//! Scripts run through the real sandbox: the committed Javy plugin in
//! wasmtime, the host API, the limits. Each test states one behaviour.

mod bad_input;
mod dependencies;
mod limits;
mod modules;
mod semantics;
mod util;
