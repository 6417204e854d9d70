//! The log forwarding flags of `mizzen run` and `mizzen server`: where
//! workers' and jobs' lines go besides Mizzen's own logs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use mizzen_forwarding::{FluentdConfig, FluentdTls, ForwardingConfig, OtlpLogsConfig, TagTemplate};

/// The spool's default bound: a day of a busy server's lines at a few
/// hundred bytes each, on the disk of a small node.
const DEFAULT_SPOOL_SIZE: &str = "1Gi";

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Log forwarding")]
pub struct ForwardingArgs {
    /// Forward every worker, job and sidecar line (masked) to this fluentd
    /// or Fluent Bit Forward endpoint (HOST:PORT)
    #[arg(long, env = "MIZZEN_FLUENTD", value_name = "HOST:PORT")]
    fluentd: Option<String>,
    /// Connect to the Forward endpoint over TLS (the system's roots unless
    /// --fluentd-ca-file)
    #[arg(long, env = "MIZZEN_FLUENTD_TLS")]
    fluentd_tls: bool,
    /// PEM certificates to trust for the Forward endpoint's TLS (implies
    /// --fluentd-tls)
    #[arg(long, env = "MIZZEN_FLUENTD_CA_FILE", value_name = "FILE")]
    fluentd_ca_file: Option<PathBuf>,
    /// The Forward endpoint's shared key (its <security> section)
    #[arg(
        long,
        env = "MIZZEN_FLUENTD_SHARED_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    fluentd_shared_key: Option<String>,
    /// Each line's tag, from {project}, {event}, {job}, {container},
    /// {source} and {type} (empty parts are dropped)
    #[arg(long, env = "MIZZEN_FLUENTD_TAG", value_name = "TEMPLATE", default_value = TagTemplate::DEFAULT)]
    fluentd_tag: String,
    /// Forward every line to this OTLP logs endpoint, HTTP with protobuf
    /// (e.g. http://collector:4318/v1/logs)
    #[arg(long, env = "MIZZEN_OTLP_LOGS_ENDPOINT", value_name = "URL")]
    otlp_logs_endpoint: Option<String>,
    /// A header sent with every OTLP request (repeatable; NAME=VALUE)
    #[arg(
        long = "otlp-header",
        env = "MIZZEN_OTLP_HEADERS",
        value_name = "NAME=VALUE",
        value_delimiter = ',',
        hide_env_values = true
    )]
    otlp_headers: Vec<String>,
    /// The most the forwarding spool (forwarding/ in the data directory)
    /// holds while a collector is down; past it the oldest lines are
    /// dropped and counted
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_SPOOL_SIZE, value_parser = crate::parse_size)]
    forwarding_spool_size: u64,
}

impl ForwardingArgs {
    /// The forwarding these flags ask for, its spool in `data_dir`; `None`
    /// when they name no collector.
    pub fn config(&self, data_dir: &Path) -> anyhow::Result<Option<ForwardingConfig>> {
        let fluentd = match &self.fluentd {
            None => None,
            Some(address) => {
                if !address.contains(':') {
                    anyhow::bail!(
                        "--fluentd {address:?}: give HOST:PORT (fluentd listens on 24224 by default)"
                    );
                }
                let tag = TagTemplate::parse(&self.fluentd_tag).context("--fluentd-tag")?;
                let tls =
                    (self.fluentd_tls || self.fluentd_ca_file.is_some()).then(|| FluentdTls {
                        ca_file: self.fluentd_ca_file.clone(),
                    });
                Some(FluentdConfig {
                    address: address.clone(),
                    tls,
                    shared_key: self.fluentd_shared_key.clone().filter(|k| !k.is_empty()),
                    hostname: hostname(),
                    tag,
                })
            }
        };
        let otlp_logs = match &self.otlp_logs_endpoint {
            None => None,
            Some(endpoint) => Some(OtlpLogsConfig {
                endpoint: endpoint.clone(),
                headers: self.otlp_headers()?,
            }),
        };
        if fluentd.is_none() && otlp_logs.is_none() {
            return Ok(None);
        }
        Ok(Some(ForwardingConfig {
            fluentd,
            otlp_logs,
            spool_dir: data_dir.join("forwarding"),
            spool_bytes: self.forwarding_spool_size,
        }))
    }

    /// The `--otlp-header`s, for every OTLP endpoint.
    pub fn otlp_headers(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut headers = Vec::new();
        for header in &self.otlp_headers {
            // The value may be a secret: only the name goes into the error.
            let (name, value) = header.split_once('=').with_context(|| {
                format!(
                    "--otlp-header {:?}: give NAME=VALUE",
                    header.split('=').next().unwrap_or_default()
                )
            })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(headers)
    }
}

/// This machine's name, as the Forward handshake introduces it (fluentd
/// refuses a client that claims the collector's own).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "mizzen".into())
}
