//! The sandbox benchmark's Rust guest: what `NO_OP_HANDLER` is in
//! JavaScript, one handler that does nothing.

use brigadier::{Event, Events, Result};

async fn exec(_event: Event) -> Result<()> {
    Ok(())
}

fn main() {
    Events::new().on("brigade.sh/cli", "exec", exec).process();
}
