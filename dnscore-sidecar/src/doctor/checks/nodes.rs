//! Nodes: kube-proxy's conntrack limit against the pods a node takes, and Karpenter's
//! interruption queue.

use serde_json::Value;

use super::{containers, env, finding};
use crate::doctor::objects::{Object, Objects};
use crate::doctor::{Finding, Severity};

/// kube-proxy's defaults for `conntrack.maxPerCore` and `conntrack.min`.
const DEFAULT_MAX_PER_CORE: u64 = 32_768;
const DEFAULT_MIN: u64 = 131_072;
/// Conntrack entries per pod below which the node's table is at risk. A DNS query over UDP
/// holds an entry for the kernel's 30 s UDP timeout, so 3,000 entries are a pod's 100
/// lookups per second (an `ndots:5` pod makes several queries per lookup); under 1,000
/// the table is full at 33 per second per pod.
const WARN_PER_POD: u64 = 3_000;
const CRITICAL_PER_POD: u64 = 1_000;

pub(super) fn check(objects: &Objects, findings: &mut Vec<Finding>, notes: &mut Vec<String>) {
    conntrack(objects, findings, notes);
    interruption_queue(objects, findings);
}

/// kube-proxy's configuration: EKS's `kube-proxy-config` (key `config`) or kubeadm's
/// `kube-proxy` (key `config.conf`), in kube-system.
fn kube_proxy_config(objects: &Objects) -> Option<(&Object, Value)> {
    [
        ("kube-proxy-config", "config"),
        ("kube-proxy", "config.conf"),
    ]
    .into_iter()
    .find_map(|(name, key)| {
        let config_map = objects.find("ConfigMap", "kube-system", name)?;
        let text = config_map.at(&["data", key])?.as_str()?;
        let value: serde_norway::Value = serde_norway::from_str(text).ok()?;
        Some((config_map, serde_json::to_value(value).ok()?))
    })
}

fn conntrack(objects: &Objects, findings: &mut Vec<Finding>, notes: &mut Vec<String>) {
    let Some((config_map, config)) = kube_proxy_config(objects) else {
        return;
    };
    let conntrack = config.get("conntrack").unwrap_or(&Value::Null);
    let max_per_core = conntrack
        .get("maxPerCore")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_PER_CORE);
    let min = conntrack
        .get("min")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MIN);
    if max_per_core == 0 {
        notes.push(format!(
            "{}: conntrack.maxPerCore is 0, so kube-proxy leaves nf_conntrack_max as the node \
             sets it: not checked",
            config_map.label()
        ));
        return;
    }
    let nodes: Vec<&Object> = objects.of_kind("Node").collect();
    if nodes.is_empty() {
        notes.push("no Node read: conntrack-capacity skipped".into());
        return;
    }
    for node in nodes {
        let capacity = |key| {
            node.at(&["status", "capacity", key])
                .and_then(Value::as_str)
        };
        let (Some(cpus), Some(pods)) = (
            capacity("cpu").and_then(cpu_count),
            capacity("pods").and_then(|p| p.parse::<u64>().ok()),
        ) else {
            notes.push(format!(
                "{}: no status.capacity cpu and pods: not checked",
                node.label()
            ));
            continue;
        };
        if pods == 0 {
            continue;
        }
        let table = (max_per_core * cpus).max(min);
        let per_pod = table / pods;
        let severity = match per_pod {
            p if p < CRITICAL_PER_POD => Severity::Critical,
            p if p < WARN_PER_POD => Severity::Warning,
            _ => continue,
        };
        findings.push(finding(
            "conntrack-capacity",
            severity,
            node,
            format!(
                "nf_conntrack_max {table} (maxPerCore {max_per_core} x {cpus} CPUs, min {min}) \
                 for up to {pods} pods: {per_pod} entries per pod"
            ),
            "every UDP DNS query holds a conntrack entry for 30 s; when the table is full the \
             node drops new connections of every kind, not only DNS",
            format!(
                "raise conntrack.maxPerCore in {} (e.g. {}), or cut the entries: a DNS cache \
                 in the pod (dnscore keeps a few sockets per upstream) or NodeLocal DNSCache",
                config_map.label(),
                (WARN_PER_POD * pods).div_ceil(cpus).next_power_of_two()
            ),
        ));
    }
}

/// A CPU quantity as a count of cores (`2`, `2000m`, rounded down, at least 1).
fn cpu_count(quantity: &str) -> Option<u64> {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<u64>().ok().map(|m| (m / 1000).max(1)),
        None => quantity.parse::<u64>().ok(),
    }
}

/// Karpenter's controller Deployment, found by its image.
pub(super) fn karpenter(objects: &Objects) -> Option<(&Object, &Value)> {
    objects.of_kind("Deployment").find_map(|d| {
        let container = containers(d.pod_template()?).find(|c| {
            c.get("image")
                .and_then(Value::as_str)
                .is_some_and(|i| i.contains("karpenter/controller") || i.contains("/karpenter:"))
        })?;
        Some((d, container))
    })
}

fn interruption_queue(objects: &Objects, findings: &mut Vec<Finding>) {
    let Some((deployment, controller)) = karpenter(objects) else {
        return;
    };
    let set = |v: Option<&str>| v.is_some_and(|v| !v.trim().is_empty());
    // INTERRUPTION_QUEUE since v0.32; AWS_INTERRUPTION_QUEUE_NAME and the
    // karpenter-global-settings ConfigMap before.
    let queue = set(env(controller, "INTERRUPTION_QUEUE"))
        || set(env(controller, "AWS_INTERRUPTION_QUEUE_NAME"))
        || objects
            .find(
                "ConfigMap",
                &deployment.namespace,
                "karpenter-global-settings",
            )
            .and_then(|c| c.at(&["data", "aws.interruptionQueueName"]))
            .is_some_and(|v| set(v.as_str()));
    if !queue {
        findings.push(finding(
            "karpenter-interruption-queue",
            Severity::Warning,
            deployment,
            "Karpenter runs without an interruption queue (INTERRUPTION_QUEUE is unset)".into(),
            "without the queue Karpenter does not hear of spot interruptions and scheduled \
             maintenance, so nodes vanish without a drain and their pods (CoreDNS among them) \
             are killed mid-query",
            "create the SQS queue and EventBridge rules (Karpenter's CloudFormation template) \
             and set settings.interruptionQueue in the Helm values"
                .into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::cpu_count;

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_count("2"), Some(2));
        assert_eq!(cpu_count("3500m"), Some(3));
        assert_eq!(cpu_count("500m"), Some(1));
        assert_eq!(cpu_count("two"), None);
    }
}
