//! CoreDNS: how many, scaled by what, protected by what, placed where, and how it stops.

use std::time::Duration;

use serde_json::Value;

use super::{containers, corefile_of, duration, finding, grace_period};
use crate::doctor::corefile::Corefile;
use crate::doctor::objects::{Object, Objects, at, selects};
use crate::doctor::{Finding, Severity};
use dnscore::settings::format_duration;

/// Replicas below which one eviction or rollout halves (or ends) cluster DNS.
const MIN_REPLICAS: u64 = 3;
/// The lameduck the outage reports ended with: the time kube-proxy and the endpoints take
/// to stop sending to a terminating pod, with room to spare.
const MIN_LAMEDUCK: Duration = Duration::from_secs(30);

/// Node labels that mark interruptible capacity, and their spot values.
pub(super) const SPOT_LABELS: [(&str, &str); 3] = [
    ("karpenter.sh/capacity-type", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("cloud.google.com/gke-spot", "true"),
];

/// The CoreDNS Deployment: kube-system's `coredns` or `kube-dns`, or the one whose pods
/// carry `k8s-app: kube-dns`.
pub(crate) fn find(objects: &Objects) -> Option<&Object> {
    objects
        .find("Deployment", "kube-system", "coredns")
        .or_else(|| objects.find("Deployment", "kube-system", "kube-dns"))
        .or_else(|| {
            objects.of_kind("Deployment").find(|d| {
                d.at(&["spec", "template", "metadata", "labels", "k8s-app"])
                    .and_then(Value::as_str)
                    == Some("kube-dns")
            })
        })
}

pub(super) fn check(objects: &Objects, findings: &mut Vec<Finding>, notes: &mut Vec<String>) {
    let Some(deployment) = find(objects) else {
        notes.push("no CoreDNS Deployment (kube-system/coredns) read: its checks skipped".into());
        return;
    };
    let Some(template) = deployment.pod_template() else {
        notes.push(format!(
            "{}: no pod template: its checks skipped",
            deployment.label()
        ));
        return;
    };
    let labels = template
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .cloned()
        .unwrap_or(Value::Null);

    let hpa = objects.of_kind("HorizontalPodAutoscaler").find(|h| {
        h.namespace == deployment.namespace
            && h.at(&["spec", "scaleTargetRef", "kind"])
                .and_then(Value::as_str)
                == Some("Deployment")
            && h.at(&["spec", "scaleTargetRef", "name"])
                .and_then(Value::as_str)
                == Some(&deployment.name)
    });
    let proportional = objects.of_kind("Deployment").find(|d| {
        d.pod_template().is_some_and(|t| {
            containers(t).any(|c| {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                image.contains("cluster-proportional-autoscaler")
                    && targets(c).is_some_and(|(kind, name)| {
                        kind.eq_ignore_ascii_case("deployment") && name == deployment.name
                    })
            })
        })
    });

    // Replicas: the HPA's floor when one scales it.
    // A count that is not a number is noted, not taken for the default.
    let count = |object: &Object, path: &[&str], default: u64| match object.at(path) {
        None | Some(Value::Null) => Some(default),
        Some(value) => value.as_u64(),
    };
    let replicas = count(deployment, &["spec", "replicas"], 1);
    let floor = match hpa {
        // minReplicas defaults to 1.
        Some(hpa) => count(hpa, &["spec", "minReplicas"], 1),
        None => replicas,
    };
    let replicas = replicas.unwrap_or(0);
    if floor.is_none() {
        notes.push(format!(
            "{}: replicas (or its HPA's minReplicas) is not a number: coredns-replicas not checked",
            deployment.label()
        ));
    }
    if let Some(floor) = floor
        && floor < MIN_REPLICAS
    {
        let severity = if floor <= 1 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let counted = if hpa.is_some() {
            format!("its HorizontalPodAutoscaler's minReplicas is {floor}")
        } else {
            format!("{replicas} replicas")
        };
        findings.push(finding(
            "coredns-replicas",
            severity,
            deployment,
            format!("CoreDNS runs {counted} (fewer than {MIN_REPLICAS})"),
            "with 2 replicas one eviction, node loss or rollout halves cluster DNS, and the \
             queries in flight to the pod that goes are lost until the clients time out",
            format!(
                "kubectl -n {} scale deploy/{} --replicas=3 (and an autoscaler, below); on EKS \
                 set replicaCount in the add-on's configuration",
                deployment.namespace, deployment.name
            ),
        ));
    }
    if hpa.is_none() && proportional.is_none() {
        findings.push(finding(
            "coredns-autoscaling",
            Severity::Warning,
            deployment,
            "no HorizontalPodAutoscaler or cluster-proportional-autoscaler scales CoreDNS".into(),
            "CoreDNS sized for a small cluster is CPU-starved when the cluster grows, and \
             starved CoreDNS drops queries, which clients retry, which starves it further",
            "run cluster-proportional-autoscaler (--target=deployment/coredns, linear mode \
             with min 3) or an HPA on CPU; on EKS, the add-on's autoScaling setting (not \
             visible in the API: if it is on, pass --skip coredns-autoscaling)"
                .into(),
        ));
    }

    if !labels.is_object() {
        notes.push(format!(
            "{}: its pod template has no labels: coredns-pdb not checked",
            deployment.label()
        ));
    }
    let covered = !labels.is_object()
        || objects.of_kind("PodDisruptionBudget").any(|pdb| {
            pdb.namespace == deployment.namespace
                && pdb
                    .at(&["spec", "selector"])
                    .is_some_and(|s| selects(s, &labels))
        });
    if !covered {
        findings.push(finding(
            "coredns-pdb",
            Severity::Warning,
            deployment,
            "no PodDisruptionBudget selects the CoreDNS pods".into(),
            "a node drain (upgrade, Karpenter consolidation) may evict every CoreDNS pod at once",
            format!(
                "a policy/v1 PodDisruptionBudget in {} with maxUnavailable: 1 and the selector \
                 of the Deployment",
                deployment.namespace
            ),
        ));
    }

    let spec = template.get("spec").unwrap_or(&Value::Null);
    let spread = spec
        .get("topologySpreadConstraints")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    let anti_affinity = at(spec, &["affinity", "podAntiAffinity"]).is_some();
    if !spread && !anti_affinity {
        findings.push(finding(
            "coredns-spread",
            Severity::Warning,
            deployment,
            "no topologySpreadConstraints and no podAntiAffinity".into(),
            "every CoreDNS pod may land on one node or in one zone, and go down with it",
            "add topologySpreadConstraints on topology.kubernetes.io/zone and \
             kubernetes.io/hostname (whenUnsatisfiable: ScheduleAnyway)"
                .into(),
        ));
    }

    spot(objects, deployment, spec, &labels, findings);

    let config_map_name = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|v| v.get("configMap")?.get("name")?.as_str())
        .unwrap_or("coredns");
    let Some(config_map) = objects.find("ConfigMap", &deployment.namespace, config_map_name) else {
        notes.push(format!(
            "no ConfigMap {}/{config_map_name} read: the Corefile checks skipped",
            deployment.namespace
        ));
        return;
    };
    let Some(corefile) = corefile_of(config_map, notes) else {
        notes.push(format!(
            "{}: no data.Corefile: its checks skipped",
            config_map.label()
        ));
        return;
    };
    corefile_checks(&corefile, config_map, deployment, template, findings);
    super::nodelocal::force_tcp(&corefile, config_map, objects, findings);
}

/// Where CoreDNS may be scheduled against the capacity types of the nodes.
fn spot(
    objects: &Objects,
    deployment: &Object,
    spec: &Value,
    labels: &Value,
    findings: &mut Vec<Finding>,
) {
    let node_selector = spec.get("nodeSelector").filter(|s| s.is_object());
    let selector_label = |key: &str| {
        node_selector
            .and_then(|s| s.get(key))
            .and_then(Value::as_str)
    };
    let spot_nodes: Vec<&Object> = objects
        .of_kind("Node")
        .filter(|n| n.at(&["metadata", "labels"]).is_some_and(is_spot_node))
        .collect();
    let terms = required_terms(spec);
    // Required terms all asking for spot, or a nodeSelector that does.
    let pinned_to_spot = SPOT_LABELS
        .iter()
        .any(|(k, v)| selector_label(k) == Some(v))
        || terms.is_some_and(|t| !t.is_empty() && t.iter().all(term_requires_spot));
    // Kept off spot: a nodeSelector on a non-spot capacity value, or required terms that
    // no spot node read matches (without nodes read: terms that name on-demand capacity).
    let kept_off_spot = SPOT_LABELS
        .iter()
        .any(|(k, v)| selector_label(k).is_some_and(|s| s != *v))
        || terms.is_some_and(|terms| {
            !terms.is_empty()
                && if spot_nodes.is_empty() {
                    terms.iter().all(term_requires_on_demand)
                } else {
                    spot_nodes.iter().all(|node| {
                        let labels = node.at(&["metadata", "labels"]).unwrap_or(&Value::Null);
                        !terms.iter().any(|term| selects(term, labels))
                    })
                }
        });
    let prefers_spot = at(
        spec,
        &[
            "affinity",
            "nodeAffinity",
            "preferredDuringSchedulingIgnoredDuringExecution",
        ],
    )
    .and_then(Value::as_array)
    .is_some_and(|p| {
        p.iter()
            .filter_map(|p| p.get("preference"))
            .any(term_requires_spot)
    });
    // Pods already on a spot node, when the pods were read.
    let on_spot: Vec<&str> = objects
        .of_kind("Pod")
        .filter(|p| p.namespace == deployment.namespace)
        .filter(|p| {
            labels.is_object()
                && p.at(&["metadata", "labels"])
                    .is_some_and(|l| selects(&serde_json::json!({ "matchLabels": labels }), l))
        })
        .filter_map(|p| p.at(&["spec", "nodeName"])?.as_str())
        .filter(|node| spot_nodes.iter().any(|n| n.name == *node))
        .collect();
    let karpenter = super::nodes::karpenter(objects).is_some();
    let problem = if pinned_to_spot {
        Some((
            Severity::Critical,
            "CoreDNS is required to run on spot capacity".to_owned(),
        ))
    } else if !on_spot.is_empty() {
        Some((
            Severity::Critical,
            format!("CoreDNS pods run on spot nodes now: {}", on_spot.join(", ")),
        ))
    } else if prefers_spot {
        Some((
            Severity::Warning,
            "CoreDNS prefers spot capacity".to_owned(),
        ))
    } else if !kept_off_spot && (!spot_nodes.is_empty() || karpenter) {
        let what = if spot_nodes.is_empty() {
            "Karpenter is installed and may launch spot nodes".to_owned()
        } else {
            format!("{} spot node(s) are in the cluster", spot_nodes.len())
        };
        Some((
            Severity::Warning,
            format!("nothing keeps CoreDNS off spot capacity: {what}"),
        ))
    } else {
        None
    };
    if let Some((severity, problem)) = problem {
        findings.push(finding(
            "coredns-spot",
            severity,
            deployment,
            problem,
            "a spot interruption evicts CoreDNS pods with two minutes' notice or none, and \
             the queries in flight to them are lost",
            "require on-demand capacity: a nodeAffinity term with karpenter.sh/capacity-type \
             In [on-demand] (or eks.amazonaws.com/capacityType In [ON_DEMAND])"
                .into(),
        ));
    }
}

/// The `--target=KIND/NAME` of a cluster-proportional-autoscaler container, from its
/// command or args.
fn targets(container: &Value) -> Option<(String, String)> {
    ["command", "args"]
        .iter()
        .filter_map(|key| container.get(key)?.as_array())
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|arg| {
            let target = arg.strip_prefix("--target=")?;
            let (kind, name) = target.split_once('/')?;
            Some((kind.to_owned(), name.to_owned()))
        })
}

fn is_spot(key: &str, value: &str) -> bool {
    SPOT_LABELS.iter().any(|(k, v)| *k == key && *v == value)
}

/// Whether a node's labels mark spot capacity.
fn is_spot_node(labels: &Value) -> bool {
    SPOT_LABELS
        .iter()
        .any(|(k, v)| labels.get(k).and_then(Value::as_str) == Some(v))
}

fn required_terms(spec: &Value) -> Option<&Vec<Value>> {
    at(
        spec,
        &[
            "affinity",
            "nodeAffinity",
            "requiredDuringSchedulingIgnoredDuringExecution",
            "nodeSelectorTerms",
        ],
    )?
    .as_array()
}

/// The capacity values a term's `In` expressions on capacity labels admit, per label.
fn capacity_in(term: &Value) -> Vec<(&str, Vec<&str>)> {
    term.get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("operator").and_then(Value::as_str) == Some("In"))
        .filter_map(|e| {
            let key = e.get("key")?.as_str()?;
            SPOT_LABELS.iter().any(|(k, _)| *k == key).then(|| {
                let values = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                (key, values)
            })
        })
        .collect()
}

/// Whether a node selector term admits only spot nodes (an `In` of spot values only).
fn term_requires_spot(term: &Value) -> bool {
    capacity_in(term)
        .iter()
        .any(|(key, values)| !values.is_empty() && values.iter().all(|v| is_spot(key, v)))
}

/// Whether a term admits only non-spot capacity (an `In` without a spot value). A `NotIn`
/// on one label says nothing of nodes that carry another (an EKS spot node has no
/// Karpenter label), so it counts only against the nodes read.
fn term_requires_on_demand(term: &Value) -> bool {
    capacity_in(term)
        .iter()
        .any(|(key, values)| !values.is_empty() && values.iter().all(|v| !is_spot(key, v)))
}

/// The health, lameduck, grace period and ready checks on CoreDNS's Corefile.
fn corefile_checks(
    corefile: &Corefile,
    config_map: &Object,
    deployment: &Object,
    template: &Value,
    findings: &mut Vec<Finding>,
) {
    let Some(root) = corefile.blocks.iter().find(|b| b.is_root()) else {
        return;
    };
    let lameduck = root
        .plugins("health")
        .next()
        .and_then(|h| h.sub("lameduck"))
        .and_then(|l| l.args.first())
        .and_then(|d| duration(d));
    if lameduck.is_none_or(|l| l < MIN_LAMEDUCK) {
        let problem = match (lameduck, root.plugins("health").next()) {
            (None, None) => "the root server block has no health plugin".to_owned(),
            (None, Some(_)) => "the health plugin has no lameduck".to_owned(),
            (Some(l), _) => format!(
                "health {{ lameduck {} }} is under {}",
                format_duration(l),
                format_duration(MIN_LAMEDUCK)
            ),
        };
        findings.push(finding(
            "coredns-lameduck",
            Severity::Warning,
            config_map,
            problem,
            "a terminating CoreDNS pod stops answering while kube-proxy still sends it queries \
             for some seconds: those queries are lost and clients wait out their timeout",
            "health { lameduck 30s } in the Corefile (and a grace period above it)".into(),
        ));
    }
    let grace = grace_period(template);
    let lameduck_secs = lameduck.map_or(0, |l| l.as_secs());
    if lameduck_secs > 0 && grace <= lameduck_secs {
        findings.push(finding(
            "coredns-grace-period",
            Severity::Warning,
            deployment,
            format!(
                "terminationGracePeriodSeconds ({grace}) is not longer than the lameduck ({lameduck_secs}s)"
            ),
            "the kubelet kills CoreDNS before its lameduck ends, cutting off the queries it \
             was still answering",
            format!("terminationGracePeriodSeconds: {} or more", lameduck_secs + 15),
        ));
    }
    if root.plugins("ready").next().is_none() {
        findings.push(finding(
            "coredns-ready",
            Severity::Warning,
            config_map,
            "the root server block has no ready plugin".into(),
            "without it the readiness probe cannot tell a CoreDNS that has not loaded its \
             zones (or is in lameduck) from one that serves, and Services send it queries",
            "add `ready` to the Corefile's .:53 block (readinessProbe httpGet :8181/ready)".into(),
        ));
    }
}
