//! The fake Kubernetes API's Services (core/v1) and NetworkPolicies
//! (networking.k8s.io/v1) through a real kube client, as the executor will
//! make them per event: create (409 on a taken name), get, list by label,
//! watch, delete, RBAC by API group, and garbage collection through
//! ownerReferences; a Service's cluster IP comes from 10.96.0.0/16.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use mizzen_tests::fake_kube::{FakeConfig, FakeKube, RoleRule};
use serde_json::json;

const NAMESPACE: &str = "jobs";

async fn fake(rules: Vec<RoleRule>) -> (FakeKube, kube::Client) {
    let fake = FakeKube::start(FakeConfig {
        namespaces: vec![NAMESPACE.to_owned()],
        rules,
    })
    .await;
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.default_namespace = NAMESPACE.into();
    let client = kube::Client::try_from(config).unwrap();
    (fake, client)
}

/// Everything on the resources of both groups.
fn all_allowed() -> Vec<RoleRule> {
    vec![
        RoleRule::new(&["*"], &["*"]),
        RoleRule {
            api_groups: vec!["networking.k8s.io".to_owned()],
            ..RoleRule::new(&["*"], &["networkpolicies"])
        },
    ]
}

fn service(name: &str, body: serde_json::Value) -> Service {
    let mut service = json!({
        "metadata": { "name": name, "labels": { "mizzen.sh/event": "e1" } },
        "spec": { "selector": { "app": name }, "ports": [{ "port": 6379 }] },
    });
    for (key, value) in body.as_object().unwrap() {
        service["spec"][key] = value.clone();
    }
    serde_json::from_value(service).unwrap()
}

fn policy(name: &str, event: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "mizzen.sh/event": event } },
        "spec": {
            "podSelector": { "matchLabels": { "mizzen.sh/event": event } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "mizzen.sh/event": event } } }] }],
            "egress": [{ "to": [{ "podSelector": {} }], "ports": [{ "port": 53 }] }],
        },
    }))
    .unwrap()
}

fn api_error(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected a Status error, got {other:?}"),
    }
}

fn cluster_ip(service: &Service) -> String {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("a cluster IP")
}

fn in_service_range(ip: &str) -> bool {
    let ip: Ipv4Addr = ip.parse().unwrap();
    let [a, b, ..] = ip.octets();
    (a, b) == (10, 96) && ip != Ipv4Addr::new(10, 96, 0, 0) && ip != Ipv4Addr::new(10, 96, 255, 255)
}

#[tokio::test]
async fn a_service_gets_a_unique_cluster_ip_and_the_api_servers_defaults() {
    let (_fake, client) = fake(all_allowed()).await;
    let services: Api<Service> = Api::default_namespaced(client);
    let post = PostParams::default();

    let created = services
        .create(&post, &service("redis", json!({})))
        .await
        .unwrap();
    let ip = cluster_ip(&created);
    assert!(in_service_range(&ip), "{ip}");
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.cluster_ips.as_deref(), Some(&[ip.clone()][..]));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(port.target_port, Some(IntOrString::Int(6379)));
    assert_eq!(cluster_ip(&services.get("redis").await.unwrap()), ip);

    // Unique among the live Services.
    let mut ips = HashSet::from([ip.clone()]);
    for i in 0..40 {
        let other = services
            .create(&post, &service(&format!("svc-{i}"), json!({})))
            .await
            .unwrap();
        assert!(in_service_range(&cluster_ip(&other)));
        assert!(
            ips.insert(cluster_ip(&other)),
            "{} given twice",
            cluster_ip(&other)
        );
    }

    let taken = services
        .create(&post, &service("copy", json!({ "clusterIP": ip })))
        .await
        .unwrap_err();
    let taken = api_error(taken);
    assert_eq!((taken.code, taken.reason.as_str()), (422, "Invalid"));
    assert!(
        taken.message.contains("provided IP is already allocated"),
        "{}",
        taken.message
    );
    let outside = api_error(
        services
            .create(
                &post,
                &service("outside", json!({ "clusterIP": "192.168.0.1" })),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(outside.code, 422);
    assert!(
        outside.message.contains("10.96.0.0/16"),
        "{}",
        outside.message
    );

    let again = api_error(
        services
            .create(&post, &service("redis", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, "services \"redis\" already exists");

    // A replacement that leaves the IP out keeps it; one that changes it is
    // refused.
    let mut replacement = service("redis", json!({ "ports": [{ "port": 6380 }] }));
    let replaced = services
        .replace("redis", &post, &replacement)
        .await
        .unwrap();
    assert_eq!(cluster_ip(&replaced), ip);
    replacement.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.7".to_owned());
    let immutable = api_error(
        services
            .replace("redis", &post, &replacement)
            .await
            .unwrap_err(),
    );
    assert_eq!(immutable.code, 422);
    assert!(
        immutable.message.contains("field is immutable"),
        "{}",
        immutable.message
    );

    // A headless Service has none, and may have no ports; several ports
    // need names.
    let headless = services
        .create(
            &post,
            &service("headless", json!({ "clusterIP": "None", "ports": [] })),
        )
        .await
        .unwrap();
    assert_eq!(cluster_ip(&headless), "None");
    let unnamed = api_error(
        services
            .create(
                &post,
                &service(
                    "unnamed",
                    json!({ "ports": [{ "port": 80 }, { "port": 443 }] }),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(unnamed.code, 422);
    assert!(
        unnamed
            .message
            .contains("spec.ports[0].name: Required value"),
        "{}",
        unnamed.message
    );

    // A deleted Service's IP is free again; a delete answers with the
    // deleted Service.
    let deleted = services
        .delete("redis", &DeleteParams::default())
        .await
        .unwrap();
    assert!(deleted.is_left(), "a Service's delete returns the object");
    let reused = services
        .create(&post, &service("reused", json!({ "clusterIP": ip })))
        .await
        .unwrap();
    assert_eq!(cluster_ip(&reused), ip);
}

#[tokio::test]
async fn services_are_listed_by_label_watched_and_deleted() {
    let (_fake, client) = fake(all_allowed()).await;
    let services: Api<Service> = Api::default_namespaced(client);
    let post = PostParams::default();
    let by_event = |event: &str| format!("mizzen.sh/event={event}");
    let watch = services
        .watch(&WatchParams::default().labels(&by_event("e1")), "0")
        .await
        .unwrap()
        .boxed();

    services
        .create(&post, &service("redis", json!({})))
        .await
        .unwrap();
    let mut other = service("postgres", json!({}));
    other.metadata.labels = Some([("mizzen.sh/event".to_owned(), "e2".to_owned())].into());
    services.create(&post, &other).await.unwrap();

    let listed = services
        .list(&ListParams::default().labels(&by_event("e1")))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["redis"]);
    services
        .delete("redis", &DeleteParams::default())
        .await
        .unwrap();
    assert!(services.get_opt("redis").await.unwrap().is_none());

    let events: Vec<_> = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        watch.take(2).try_collect::<Vec<_>>(),
    )
    .await
    .expect("the watch's events")
    .unwrap();
    let seen: Vec<(&str, String)> = events
        .iter()
        .map(|event| match event {
            WatchEvent::Added(s) => ("ADDED", s.metadata.name.clone().unwrap()),
            WatchEvent::Deleted(s) => ("DELETED", s.metadata.name.clone().unwrap()),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ADDED", "redis".to_owned()),
            ("DELETED", "redis".to_owned())
        ]
    );
}

#[tokio::test]
async fn network_policies_are_stored_listed_watched_and_deleted() {
    let (_fake, client) = fake(all_allowed()).await;
    let policies: Api<NetworkPolicy> = Api::default_namespaced(client);
    let post = PostParams::default();
    let watch = policies
        .watch(&WatchParams::default().labels("mizzen.sh/event=e1"), "0")
        .await
        .unwrap()
        .boxed();

    let created = policies
        .create(&post, &policy("event-e1", "e1"))
        .await
        .unwrap();
    let spec = created.spec.as_ref().unwrap();
    // Defaulted as the API server does: Egress too, as there are egress rules.
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    let egress_port = &spec.egress.as_ref().unwrap()[0].ports.as_ref().unwrap()[0];
    assert_eq!(egress_port.protocol.as_deref(), Some("TCP"));
    assert_eq!(created.metadata.namespace.as_deref(), Some(NAMESPACE));
    policies
        .create(&post, &policy("event-e2", "e2"))
        .await
        .unwrap();

    let again = api_error(
        policies
            .create(&post, &policy("event-e1", "e1"))
            .await
            .unwrap_err(),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        again.message,
        "networkpolicies.networking.k8s.io \"event-e1\" already exists"
    );
    assert_eq!(
        policies.get("event-e1").await.unwrap().spec,
        created.spec,
        "stored as created"
    );
    let listed = policies
        .list(&ListParams::default().labels("mizzen.sh/event=e2"))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["event-e2"]);

    let deleted = policies
        .delete("event-e1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        deleted.is_right(),
        "a NetworkPolicy's delete answers a Status"
    );
    let missing = api_error(policies.get("event-e1").await.unwrap_err());
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (
            404,
            "networkpolicies.networking.k8s.io \"event-e1\" not found"
        )
    );

    let events = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        watch.take(2).try_collect::<Vec<_>>(),
    )
    .await
    .expect("the watch's events")
    .unwrap();
    assert!(
        matches!(
            &events[..],
            [WatchEvent::Added(a), WatchEvent::Deleted(d)]
                if a.metadata.name.as_deref() == Some("event-e1")
                    && d.metadata.name.as_deref() == Some("event-e1")
        ),
        "{events:?}"
    );
}

#[tokio::test]
async fn rbac_names_the_resource_and_its_api_group() {
    // Services may be created; the network policies rule names the core
    // group, which does not serve them, so it grants nothing.
    let (fake, client) = fake(vec![
        RoleRule::new(&["create"], &["services"]),
        RoleRule::new(&["*"], &["networkpolicies"]),
    ])
    .await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let policies: Api<NetworkPolicy> = Api::default_namespaced(client);
    services
        .create(&PostParams::default(), &service("redis", json!({})))
        .await
        .unwrap();
    let refused = api_error(services.get("redis").await.unwrap_err());
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "services \"redis\" is forbidden: User \"system:serviceaccount:mizzen:mizzen\" cannot \
         get resource \"services\" in API group \"\" in the namespace \"jobs\""
    );
    let refused = api_error(
        policies
            .create(&PostParams::default(), &policy("event-e1", "e1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "networkpolicies.networking.k8s.io is forbidden: User \
         \"system:serviceaccount:mizzen:mizzen\" cannot create resource \"networkpolicies\" in \
         API group \"networking.k8s.io\" in the namespace \"jobs\""
    );
    let denied: Vec<_> = fake
        .denied()
        .into_iter()
        .map(|d| (d.verb, d.group, d.resource))
        .collect();
    assert_eq!(
        denied,
        [
            ("get".to_owned(), String::new(), "services".to_owned()),
            (
                "create".to_owned(),
                "networking.k8s.io".to_owned(),
                "networkpolicies".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn deleting_the_owner_collects_services_and_network_policies() {
    let (fake, client) = fake(all_allowed()).await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let policies: Api<NetworkPolicy> = Api::default_namespaced(client);
    let post = PostParams::default();
    let owner = secrets
        .create(
            &post,
            &serde_json::from_value(json!({ "metadata": { "name": "mizzen-event-e1" } })).unwrap(),
        )
        .await
        .unwrap();
    let owned = json!([{
        "apiVersion": "v1", "kind": "Secret",
        "name": "mizzen-event-e1", "uid": owner.metadata.uid,
    }]);
    let mut owned_service = service("redis", json!({ "clusterIP": "None" }));
    owned_service.metadata.owner_references = Some(serde_json::from_value(owned.clone()).unwrap());
    services.create(&post, &owned_service).await.unwrap();
    let mut owned_policy = policy("event-e1", "e1");
    owned_policy.metadata.owner_references = Some(serde_json::from_value(owned).unwrap());
    policies.create(&post, &owned_policy).await.unwrap();
    // Not owned: stays.
    services
        .create(&post, &service("unrelated", json!({})))
        .await
        .unwrap();

    secrets
        .delete("mizzen-event-e1", &DeleteParams::default())
        .await
        .unwrap();
    let names = |resource| -> Vec<String> {
        fake.objects(resource, NAMESPACE)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("services"), ["unrelated"]);
    assert!(names("networkpolicies").is_empty());
}
