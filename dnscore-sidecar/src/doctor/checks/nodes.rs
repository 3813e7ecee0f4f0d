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
fn kube_proxy_config<'a>(
    objects: &'a Objects,
    notes: &mut Vec<String>,
) -> Option<(&'a Object, Value)> {
    let (config_map, text) = [
        ("kube-proxy-config", "config"),
        ("kube-proxy", "config.conf"),
    ]
    .into_iter()
    .find_map(|(name, key)| {
        let config_map = objects.find("ConfigMap", "kube-system", name)?;
        Some((config_map, config_map.at(&["data", key])?.as_str()?))
    })?;
    let parsed = serde_norway::from_str::<serde_norway::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .filter(Value::is_object);
    if parsed.is_none() {
        notes.push(format!(
            "{}: its KubeProxyConfiguration does not read as YAML: conntrack-capacity skipped",
            config_map.label()
        ));
    }
    Some((config_map, parsed?))
}

fn conntrack(objects: &Objects, findings: &mut Vec<Finding>, notes: &mut Vec<String>) {
    let Some((config_map, config)) = kube_proxy_config(objects, notes) else {
        return;
    };
    // Clusters that replaced kube-proxy (Cilium, EKS Auto Mode) may keep its ConfigMap.
    let daemon_sets_read = objects.of_kind("DaemonSet").next().is_some();
    if daemon_sets_read
        && objects
            .find("DaemonSet", "kube-system", "kube-proxy")
            .is_none()
    {
        notes.push(format!(
            "{} is there but no kube-system/kube-proxy DaemonSet: conntrack-capacity skipped",
            config_map.label()
        ));
        return;
    }
    let conntrack = config.get("conntrack").unwrap_or(&Value::Null);
    // int32 fields in kube-proxy; a larger number is taken at that bound.
    let field = |key: &str, default: u64| {
        conntrack
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or(default)
            .min(i32::MAX as u64)
    };
    let (max_per_core, min) = (
        field("maxPerCore", DEFAULT_MAX_PER_CORE),
        field("min", DEFAULT_MIN),
    );
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
        let table = max_per_core.saturating_mul(cpus).max(min);
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
                "nf_conntrack_max {table} (maxPerCore {max_per_core} x {cpus} CPUs, min {min}; \
                 more only if the node raises it itself) for up to {pods} pods: {per_pod} \
                 entries per pod"
            ),
            "every UDP DNS query holds a conntrack entry for 30 s; when the table is full the \
             node drops new connections of every kind, not only DNS",
            format!(
                "raise conntrack.maxPerCore in {} (e.g. {}), or cut the entries: a DNS cache \
                 in the pod (dnscore keeps a few sockets per upstream) or NodeLocal DNSCache",
                config_map.label(),
                WARN_PER_POD
                    .saturating_mul(pods)
                    .div_ceil(cpus)
                    .checked_next_power_of_two()
                    .unwrap_or(u64::MAX)
                    .min(i32::MAX as u64)
            ),
        ));
    }
}

/// A CPU quantity as a count of cores (`2`, `2000m`, rounded down, at least 1); `None`
/// for no CPU at all or what does not read as a count.
fn cpu_count(quantity: &str) -> Option<u64> {
    let cores = match quantity.strip_suffix('m') {
        Some(milli) => milli
            .parse::<u64>()
            .ok()
            .filter(|&m| m > 0)
            .map(|m| (m / 1000).max(1)),
        None => quantity.parse::<u64>().ok(),
    };
    cores.filter(|&c| c > 0)
}

/// Karpenter's controller Deployment, found by its image.
pub(crate) fn karpenter(objects: &Objects) -> Option<(&Object, &Value)> {
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
    let queue_env = [
        env(controller, "INTERRUPTION_QUEUE"),
        env(controller, "AWS_INTERRUPTION_QUEUE_NAME"),
    ];
    // Set from a reference: not known here, so not said to be missing.
    if queue_env.contains(&super::Env::Unknown) {
        return;
    }
    let flag = controller
        .get("args")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|a| a.starts_with("--interruption-queue"))
        });
    // INTERRUPTION_QUEUE since v0.32; AWS_INTERRUPTION_QUEUE_NAME and the
    // karpenter-global-settings ConfigMap before.
    let queue = flag
        || queue_env.iter().any(|e| set(e.value()))
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
        assert_eq!(cpu_count("0"), None);
        assert_eq!(cpu_count("0m"), None);
    }
}
