//! The live mode: the objects the checks read, listed from the API server through kube-rs,
//! read-only (`get` and `list`, the ClusterRole of `deploy/doctor-rbac.yaml`).
//!
//! What is listed: Deployments, DaemonSets, StatefulSets, Jobs, CronJobs,
//! HorizontalPodAutoscalers and PodDisruptionBudgets in every namespace; Nodes and
//! Namespaces; the ConfigMaps and Services of kube-system, and elsewhere the ConfigMap CoreDNS mounts
//! and Karpenter's `karpenter-global-settings` (by name); the CoreDNS pods (by the
//! Deployment's selector), to see where they run; SecurityGroupPolicies, when their CRD is
//! installed. Bare pods of other namespaces are not listed (workloads are
//! checked through their controllers). Each list is turned into the same JSON trees the
//! file mode reads, so both give the same findings on the same objects.

use std::path::Path;

use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Client, Config};
use serde_json::{Value, json};

use super::objects::Objects;

/// Why the API server could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// No usable configuration (kubeconfig or in-cluster).
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    /// A list failed (connection, authentication, RBAC).
    #[error("cannot list {what}: {error}")]
    List {
        /// What was listed.
        what: String,
        /// kube's error.
        error: String,
    },
}

/// One kind to list.
struct Listing {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    /// `None`: every namespace (or cluster-scoped); `Some`: that namespace.
    namespace: Option<&'static str>,
    labels: Option<&'static str>,
    /// A CRD that may not be installed: a 404 is a note, not an error.
    optional: bool,
}

const fn listing(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> Listing {
    Listing {
        group,
        version,
        kind,
        plural,
        namespace: None,
        labels: None,
        optional: false,
    }
}

const LISTINGS: [Listing; 12] = [
    listing("apps", "v1", "Deployment", "deployments"),
    listing("apps", "v1", "DaemonSet", "daemonsets"),
    listing("apps", "v1", "StatefulSet", "statefulsets"),
    listing("batch", "v1", "Job", "jobs"),
    listing("batch", "v1", "CronJob", "cronjobs"),
    listing(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
    ),
    listing(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
    ),
    listing("", "v1", "Node", "nodes"),
    listing("", "v1", "Namespace", "namespaces"),
    Listing {
        namespace: Some("kube-system"),
        ..listing("", "v1", "ConfigMap", "configmaps")
    },
    // kube-dns's address tells a forward to the cluster DNS from one to elsewhere.
    Listing {
        namespace: Some("kube-system"),
        ..listing("", "v1", "Service", "services")
    },
    Listing {
        optional: true,
        ..listing(
            "vpcresources.k8s.aws",
            "v1beta1",
            "SecurityGroupPolicy",
            "securitygrouppolicies",
        )
    },
];

/// The API groups and resources the live mode reads (for the ClusterRole's test).
pub fn resources() -> Vec<(&'static str, &'static str)> {
    let mut all: Vec<_> = LISTINGS.iter().map(|l| (l.group, l.plural)).collect();
    all.push(("", "pods"));
    all
}

const CONFIG_MAP: Listing = listing("", "v1", "ConfigMap", "configmaps");
const POD: Listing = listing("", "v1", "Pod", "pods");

/// A client from `kubeconfig`, or else from the environment (KUBECONFIG, ~/.kube/config,
/// or the pod's service account in a cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, LiveError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| LiveError::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| LiveError::Config(format!("{}: {e}", path.display())))?
        }
        None => Config::infer()
            .await
            .map_err(|e| LiveError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| LiveError::Config(e.to_string()))
}

/// Lists the objects the checks read.
pub async fn read(client: &Client) -> Result<Objects, LiveError> {
    let mut objects = Objects::default();
    for listing in &LISTINGS {
        list(client, listing, listing.namespace, &mut objects).await?;
    }
    // What the checks need beyond the lists: the ConfigMaps that CoreDNS, NodeLocal
    // DNSCache and Karpenter (its older settings) name, where they are not in kube-system;
    // and the CoreDNS pods, by the Deployment's own selector, to see where they run.
    let mut wanted: Vec<(String, String)> = Vec::new();
    if let Some(coredns) = super::checks::coredns(&objects) {
        let volume = coredns
            .pod_template()
            .and_then(|t| t.get("spec")?.get("volumes")?.as_array())
            .into_iter()
            .flatten()
            .find_map(|v| v.get("configMap")?.get("name")?.as_str());
        if let Some(name) = volume {
            wanted.push((coredns.namespace.clone(), name.to_owned()));
        }
        let selector = coredns
            .at(&["spec", "selector", "matchLabels"])
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty());
        if let Some(selector) = selector {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &coredns.namespace, &resource(&POD));
            match api.list(&ListParams::default().labels(&selector)).await {
                Ok(list) => {
                    for pod in list.items {
                        let tree = with_type(serde_json::to_value(pod).unwrap_or_default(), "Pod", "v1");
                        objects.add_tree("CoreDNS pods", tree);
                    }
                }
                Err(error) => objects.notes.push(format!(
                    "cannot list the CoreDNS pods in {} ({error}): where they run now is not checked",
                    coredns.namespace
                )),
            }
        }
    }
    if let Some((karpenter, _)) = super::checks::karpenter(&objects) {
        wanted.push((
            karpenter.namespace.clone(),
            "karpenter-global-settings".to_owned(),
        ));
    }
    for (namespace, name) in wanted {
        if namespace == "kube-system" {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &resource(&CONFIG_MAP));
        match api.get_opt(&name).await {
            Ok(Some(config_map)) => {
                let tree = with_type(
                    serde_json::to_value(config_map).unwrap_or_default(),
                    "ConfigMap",
                    "v1",
                );
                objects.add_tree(&format!("ConfigMap {namespace}/{name}"), tree);
            }
            Ok(None) => {}
            Err(error) => objects
                .notes
                .push(format!("cannot get ConfigMap {namespace}/{name}: {error}")),
        }
    }
    Ok(objects)
}

fn resource(listing: &Listing) -> ApiResource {
    let api_version = if listing.group.is_empty() {
        listing.version.to_owned()
    } else {
        format!("{}/{}", listing.group, listing.version)
    };
    ApiResource {
        group: listing.group.to_owned(),
        version: listing.version.to_owned(),
        api_version,
        kind: listing.kind.to_owned(),
        plural: listing.plural.to_owned(),
    }
}

fn with_type(mut tree: Value, kind: &str, api_version: &str) -> Value {
    if let Value::Object(map) = &mut tree {
        map.entry("kind").or_insert_with(|| json!(kind));
        map.entry("apiVersion")
            .or_insert_with(|| json!(api_version));
    }
    tree
}

async fn list(
    client: &Client,
    listing: &Listing,
    namespace: Option<&str>,
    objects: &mut Objects,
) -> Result<(), LiveError> {
    let resource = resource(listing);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let mut params = ListParams::default();
    if let Some(labels) = listing.labels {
        params = params.labels(labels);
    }
    let what = match namespace {
        Some(ns) => format!("{} in {ns}", listing.plural),
        None => listing.plural.to_owned(),
    };
    let items = match api.list(&params).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if listing.optional && status.code == 404 => {
            objects.notes.push(format!(
                "{} not listed: the API server does not serve {} (CRD not installed)",
                listing.plural, resource.api_version
            ));
            return Ok(());
        }
        Err(error) => {
            return Err(LiveError::List {
                what,
                error: error.to_string(),
            });
        }
    };
    for item in items {
        let tree = serde_json::to_value(item).unwrap_or(Value::Null);
        objects.add_tree(&what, with_type(tree, listing.kind, &resource.api_version));
    }
    Ok(())
}
