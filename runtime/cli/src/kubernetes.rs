//! `--executor kubernetes`: the flags that configure the Kubernetes executor
//! for `mizzen run` and `mizzen server`, and connecting it.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mizzen_kubernetes::kept::{DEFAULT_JOB_FILES_IMAGE, JobFilesConfig};
use mizzen_kubernetes::{
    DEFAULT_CLUSTER_DOMAIN, DEFAULT_CPU_REQUEST, DEFAULT_GIT_IMAGE, DEFAULT_MEMORY_REQUEST,
    DEFAULT_RUN_AS_USER, DEFAULT_WORKSPACE_SIZE, KubernetesConfig, KubernetesExecutor,
    ResourceRequests,
};
use mizzen_objects::JobStorage;

use crate::parse_duration;

/// How jobs become Pods (used with `--executor kubernetes`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Kubernetes executor (--executor kubernetes)")]
pub struct KubernetesArgs {
    /// The namespace of job Pods; `{project}` in it is replaced by the
    /// project's id (e.g. `mizzen-{project}`: a namespace per project)
    /// [default: the kubeconfig context's namespace, or the server Pod's]
    #[arg(long, env = "MIZZEN_KUBERNETES_NAMESPACE", value_name = "NAMESPACE")]
    kubernetes_namespace: Option<String>,
    /// Storage class of the events' workspace claims (it must offer
    /// ReadWriteMany) [default: the cluster's default class]
    #[arg(long, value_name = "CLASS")]
    kubernetes_workspace_storage_class: Option<String>,
    /// Size of a workspace when the project does not set one
    #[arg(long, value_name = "QUANTITY", default_value = DEFAULT_WORKSPACE_SIZE)]
    kubernetes_workspace_size: String,
    /// Image of the init container that checks out a project's git source
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_GIT_IMAGE)]
    kubernetes_git_image: String,
    /// CPU each job container requests ("" for none)
    #[arg(long, value_name = "QUANTITY", default_value = DEFAULT_CPU_REQUEST)]
    kubernetes_cpu_request: String,
    /// Memory each job container requests ("" for none)
    #[arg(long, value_name = "QUANTITY", default_value = DEFAULT_MEMORY_REQUEST)]
    kubernetes_memory_request: String,
    /// The Pods' user and volume group (fsGroup), which their source
    /// checkout runs as; job containers run as their own `user`, nobody by
    /// default
    #[arg(long, value_name = "UID", default_value_t = DEFAULT_RUN_AS_USER)]
    kubernetes_run_as_user: i64,
    /// How long an image may keep failing to pull before its job fails
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2m")]
    kubernetes_image_pull_timeout: Duration,
    /// The cluster's DNS domain, in which jobs find the event's services by
    /// name
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    kubernetes_cluster_domain: String,
    /// The server's URL as job Pods reach it (e.g.
    /// http://mizzen.mizzen.svc:8080), for the helpers that restore and save
    /// jobs' artifacts and caches; without it such jobs are refused
    /// (`mizzen server` only)
    #[arg(long, value_name = "URL")]
    kubernetes_job_files_url: Option<String>,
    /// Mizzen's image, which those helpers run
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_JOB_FILES_IMAGE)]
    kubernetes_job_files_image: String,
}

impl KubernetesArgs {
    /// Connects to the cluster that KUBECONFIG (or ~/.kube/config, or the
    /// in-cluster service account) names.
    pub async fn connect(&self) -> anyhow::Result<KubernetesCluster> {
        let client = KubernetesExecutor::client_from_environment()
            .await
            .context("--executor kubernetes")?;
        let namespace = self
            .kubernetes_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let quantity = |q: &String| (!q.is_empty()).then(|| q.clone());
        let config = KubernetesConfig {
            workspace_storage_class: self.kubernetes_workspace_storage_class.clone(),
            workspace_size: self.kubernetes_workspace_size.clone(),
            requests: ResourceRequests {
                cpu: quantity(&self.kubernetes_cpu_request),
                memory: quantity(&self.kubernetes_memory_request),
            },
            git_image: self.kubernetes_git_image.clone(),
            run_as_user: self.kubernetes_run_as_user,
            image_pull_timeout: self.kubernetes_image_pull_timeout,
            cluster_domain: self.kubernetes_cluster_domain.clone(),
            ..KubernetesConfig::new(namespace)
        };
        Ok(KubernetesCluster {
            client,
            config,
            job_files_url: self
                .kubernetes_job_files_url
                .clone()
                .filter(|u| !u.is_empty()),
            job_files_image: self.kubernetes_job_files_image.clone(),
        })
    }
}

/// A cluster connected to, and how its executor is configured.
#[derive(Clone)]
pub struct KubernetesCluster {
    client: kube::Client,
    config: KubernetesConfig,
    job_files_url: Option<String>,
    job_files_image: String,
}

impl KubernetesCluster {
    /// The executor, keeping jobs' artifacts and caches in `storage` (the
    /// server's) when their helpers have a URL to reach it at.
    pub fn executor(&self, storage: Option<JobStorage>) -> KubernetesExecutor {
        let job_files = self
            .job_files_url
            .clone()
            .zip(storage)
            .map(|(server_url, storage)| JobFilesConfig {
                server_url,
                image: self.job_files_image.clone(),
                storage,
            });
        KubernetesExecutor::new(
            self.client.clone(),
            KubernetesConfig {
                job_files,
                ..self.config.clone()
            },
        )
    }
}
