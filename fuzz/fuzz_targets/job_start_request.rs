//! Any bytes as a guest's `job.start` request, decoded and checked against a
//! project (with and without its policies): a job or a named error, never a
//! panic; a job that passes obeys the policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mizzen_runtime::executor::{EventContext, Source};
use mizzen_runtime::jobs::decode_start;
use mizzen_runtime::project::JobPolicies;

fuzz_target!(|data: &[u8]| {
    let strict = data.first().is_some_and(|b| b & 1 == 0);
    let event = EventContext {
        event_id: "fuzz-event".into(),
        project_id: "fuzz-project".into(),
        use_workspace: !strict,
        source: (!strict).then(|| Source::Directory("/tmp/fuzz-source".into())),
        policies: JobPolicies {
            allow_privileged: !strict,
            allow_docker_socket_mount: !strict,
        },
        image_pull_secrets: Vec::new(),
        workspace_size: None,
        container_limits: Default::default(),
        volumes: Default::default(),
    };
    let Ok(job) = decode_start(data.get(1..).unwrap_or_default(), &event) else {
        return;
    };
    if strict {
        let containers = std::iter::once(&job.spec.primary_container)
            .chain(job.spec.sidecar_containers.values());
        for container in containers {
            assert!(
                !container.privileged,
                "a privileged container passed without the policy"
            );
            assert!(
                !container.use_host_docker_socket,
                "the Docker socket passed without the policy"
            );
            assert!(
                container.workspace_mount_path.is_empty(),
                "a workspace passed without useWorkspace"
            );
            assert!(
                container.source_mount_path.is_empty(),
                "a source mount passed without a source"
            );
        }
    }
});
