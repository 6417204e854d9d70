//! `event.get`: the worker's event as its script may see it: the project's
//! secrets the script may not read are not in it
//! ([`mizzen_host_api::types::Event::script_view`]). Serialised once, by
//! whoever gave the sandbox the worker.

use mizzen_host_api::Op;

/// The operations this capability answers.
pub const OPS: &[Op] = &[Op::EventGet];

/// The event a worker's `event.get` returns.
pub(crate) struct EventView {
    json: Vec<u8>,
}

impl EventView {
    pub fn new(json: Vec<u8>) -> Self {
        Self { json }
    }

    /// The reply to `event.get`.
    pub fn get(&self) -> Vec<u8> {
        self.json.clone()
    }
}
