//! Address isolation between events' networks that holds whatever the
//! engine's own firewall does meanwhile.
//!
//! Podman isolates a network created with `isolate` through one `FORWARD`
//! rule that jumps to netavark's isolation chains, and netavark 1.4
//! (Debian 12's) deletes that rule whenever a container of any isolated
//! network is torn down; only the next container started on one puts it
//! back. In between, every event's containers reach every other's by
//! address. So each event's bridge gets a rule of Mizzen's own, in a table of
//! its own (`inet mizzen_isolation`, which netavark never touches): traffic
//! from that bridge to any other event's bridge is dropped. The rules are
//! per bridge because traffic within one bridge may pass the same hook (when
//! `br_netfilter` is loaded) and must not be dropped.
//!
//! Each bridge is named after its event (`mz` and 12 hex digits of a hash of
//! the event's id: Linux allows 15 bytes), so rules never need the engine's
//! names. A rule is added when the event's network is made and deleted when
//! it is removed (by the event's end, or by the sweep after a crash). Changing the
//! host's firewall needs `nft` and the privilege to use it: without them a
//! warning says once that isolation is the engine's alone.

use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use tokio::process::Command;

const TABLE: &str = "mizzen_isolation";
const CHAIN: &str = "forward";
/// What every event bridge's name starts with.
const PREFIX: &str = "mz";

/// The name of the bridge of an event's network.
pub(crate) fn bridge_name(event_id: &str) -> String {
    let hash = Sha256::digest(event_id.as_bytes());
    let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

/// Set once the firewall could not be changed, so that the warning is said
/// once per process.
static WARNED: AtomicBool = AtomicBool::new(false);

fn warn_once(why: &str) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            why,
            "address isolation between events is left to the container engine (Podman's netavark 1.4 drops it whenever an isolated network's container is torn down)"
        );
    }
}

/// Runs `nft` with `args`, or with `script` on its standard input.
async fn nft(args: &[&str], script: Option<&str>) -> Result<String, String> {
    let mut command = Command::new("nft");
    command.args(args);
    if script.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("nft: {e}"))?;
    if let Some(script) = script {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("nft: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Drops traffic from `bridge` to every other event's bridge.
pub(crate) async fn isolate(bridge: &str) {
    // `add` leaves a table or chain that exists as it is, rules included.
    let script = format!(
        "add table inet {TABLE}\n\
         add chain inet {TABLE} {CHAIN} {{ type filter hook forward priority -10; policy accept; }}\n\
         add rule inet {TABLE} {CHAIN} iifname \"{bridge}\" oifname \"{PREFIX}*\" oifname != \"{bridge}\" drop comment \"{bridge}\"\n"
    );
    if let Err(e) = nft(&["-f", "-"], Some(&script)).await {
        warn_once(&e);
    }
}

/// Deletes `bridge`'s rule, once its network is removed.
pub(crate) async fn release(expected: &str) {
    let Ok(listing) = nft(&["-a", "list", "chain", "inet", TABLE, CHAIN], None).await else {
        return;
    };
    for line in listing.lines() {
        // `iifname "mz…" … comment "mz…" # handle 7`
        let Some((rule, handle)) = line.rsplit_once("# handle ") else {
            continue;
        };
        let Some(bridge) = rule
            .split("comment \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        if bridge == expected
            && let Err(e) = nft(
                &[
                    "delete",
                    "rule",
                    "inet",
                    TABLE,
                    CHAIN,
                    "handle",
                    handle.trim(),
                ],
                None,
            )
            .await
        {
            tracing::warn!(bridge, error = %e, "could not delete an event bridge's isolation rule");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_linux_and_differ_by_event() {
        let a = bridge_name("4c9a3f0e-2b7d-4f51-9a7e-1d2c3b4a5e6f");
        let b = bridge_name("4c9a3f0e-2b7d-4f51-9a7e-1d2c3b4a5e70");
        assert!(a.len() <= 15 && a.starts_with(PREFIX), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, bridge_name("4c9a3f0e-2b7d-4f51-9a7e-1d2c3b4a5e6f"));
    }
}
