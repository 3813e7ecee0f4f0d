//! CoreDNS: how many, scaled by what, protected by what, placed where, and how it stops.

use std::time::Duration;

use serde_json::Value;

use super::{containers, corefile_of, duration, finding, grace_period, seconds};
use crate::doctor::corefile::Corefile;
use crate::doctor::objects::{Object, Objects, at, selects};
use crate::doctor::{Finding, Severity};

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
fn find(objects: &Objects) -> Option<&Object> {
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
                let targets = c
                    .get("args")
                    .or_else(|| c.get("command"))
                    .and_then(Value::as_array)
                    .is_some_and(|args| {
                        args.iter().filter_map(Value::as_str).any(|a| {
                            a.to_ascii_lowercase()
                                .contains(&format!("deployment/{}", deployment.name))
                        })
                    });
                image.contains("cluster-proportional-autoscaler") && targets
            })
        })
    });

    // Replicas: the HPA's floor when one scales it.
    let replicas = deployment
        .at(&["spec", "replicas"])
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let floor = match hpa {
        // minReplicas defaults to 1.
        Some(hpa) => hpa
            .at(&["spec", "minReplicas"])
            .and_then(Value::as_u64)
            .unwrap_or(1),
        None => replicas,
    };
    if floor < MIN_REPLICAS {
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

    let covered = objects.of_kind("PodDisruptionBudget").any(|pdb| {
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
    super::nodelocal::force_tcp(&corefile, config_map, findings);
}

/// Where CoreDNS may be scheduled against the capacity types of the nodes.
fn spot(
    objects: &Objects,
    deployment: &Object,
    spec: &Value,
    labels: &Value,
    findings: &mut Vec<Finding>,
) {
    let pinned_to_spot = spec.get("nodeSelector").is_some_and(|s| {
        SPOT_LABELS
            .iter()
            .any(|(k, v)| s.get(k).and_then(Value::as_str) == Some(v))
    });
    let kept_off_spot = spec.get("nodeSelector").is_some_and(|s| {
        SPOT_LABELS.iter().any(|(k, _)| {
            s.get(k)
                .and_then(Value::as_str)
                .is_some_and(|v| !is_spot(k, v))
        })
    }) || required_terms(spec).is_some_and(|terms| {
        // Every term must exclude spot: a pod may go to a node matching any term.
        !terms.is_empty() && terms.iter().all(term_excludes_spot)
    });
    let spot_nodes: Vec<&Object> = objects
        .of_kind("Node")
        .filter(|n| {
            SPOT_LABELS
                .iter()
                .any(|(k, v)| n.at(&["metadata", "labels", k]).and_then(Value::as_str) == Some(v))
        })
        .collect();
    // Pods already on a spot node, when the pods were read.
    let on_spot: Vec<&str> = objects
        .of_kind("Pod")
        .filter(|p| p.namespace == deployment.namespace)
        .filter(|p| {
            p.at(&["metadata", "labels"])
                .is_some_and(|l| selects(&serde_json::json!({ "matchLabels": labels }), l))
        })
        .filter_map(|p| p.at(&["spec", "nodeName"])?.as_str())
        .filter(|node| spot_nodes.iter().any(|n| n.name == *node))
        .collect();
    let karpenter = super::nodes::karpenter(objects).is_some();
    let problem = if pinned_to_spot {
        Some((
            Severity::Critical,
            "CoreDNS's nodeSelector asks for spot capacity".to_owned(),
        ))
    } else if !on_spot.is_empty() {
        Some((
            Severity::Critical,
            format!("CoreDNS pods run on spot nodes now: {}", on_spot.join(", ")),
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

fn is_spot(key: &str, value: &str) -> bool {
    SPOT_LABELS.iter().any(|(k, v)| *k == key && *v == value)
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

/// Whether a node selector term admits only non-spot nodes.
fn term_excludes_spot(term: &Value) -> bool {
    let Some(expressions) = term.get("matchExpressions").and_then(Value::as_array) else {
        return false;
    };
    expressions.iter().any(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        if !SPOT_LABELS.iter().any(|(k, _)| *k == key) {
            return false;
        }
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => !values.is_empty() && values.iter().all(|v| !is_spot(key, v)),
            Some("NotIn") => values.iter().any(|v| is_spot(key, v)),
            _ => false,
        }
    })
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
        let problem = match lameduck {
            None => "the health plugin has no lameduck".to_owned(),
            Some(l) => format!(
                "health {{ lameduck {} }} is under {}",
                seconds(l),
                seconds(MIN_LAMEDUCK)
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
