//! Jobs through the real path: a script in the sandbox starts jobs, the
//! Docker executor runs them on the machine's container engine (Podman in
//! CI, set up by scripts/setup-engine). Every test also checks that nothing
//! of its event is left on the engine or on disk.

mod bad_input;
mod environment_files;
mod host_files;
mod limits;
mod mounts;
mod output;
mod running;
mod services;
mod sidecars;
mod users;
mod util;
mod volumes;
mod wasm;
