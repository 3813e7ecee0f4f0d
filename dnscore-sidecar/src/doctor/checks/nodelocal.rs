//! NodeLocal DNSCache: `force_tcp` in its forward blocks (and CoreDNS's), and pods with
//! security groups that it cannot reach.

use serde_json::Value;

use super::{Env, containers, corefile_of, env, finding};
use crate::doctor::corefile::Corefile;
use crate::doctor::objects::{Object, Objects};
use crate::doctor::{Finding, Severity};

/// Forward targets that are the VPC resolver on EKS nodes (a node's resolv.conf names it).
const VPC_RESOLVER_TARGETS: [&str; 3] = [
    "/etc/resolv.conf",
    "__PILLAR__UPSTREAM__SERVERS__",
    "169.254.169.253",
];

/// NodeLocal DNSCache's DaemonSet: by its image (`k8s-dns-node-cache`; the upstream
/// manifest names it `node-local-dns`, Kubespray `nodelocaldns`).
fn daemon_set(objects: &Objects) -> Option<&Object> {
    objects.of_kind("DaemonSet").find(|d| {
        d.name == "node-local-dns"
            || d.pod_template().is_some_and(|t| {
                containers(t).any(|c| {
                    c.get("image")
                        .and_then(Value::as_str)
                        .is_some_and(|i| i.contains("k8s-dns-node-cache"))
                })
            })
    })
}

pub(super) fn check(objects: &Objects, findings: &mut Vec<Finding>, notes: &mut Vec<String>) {
    let daemon_set = daemon_set(objects);
    // Its ConfigMap: the one its volumes name, else by the usual names.
    let by_volume = daemon_set.and_then(|d| {
        let name = d
            .pod_template()?
            .get("spec")?
            .get("volumes")?
            .as_array()?
            .iter()
            .find_map(|v| v.get("configMap")?.get("name")?.as_str())?;
        objects.find("ConfigMap", &d.namespace, name)
    });
    let config_map = by_volume.or_else(|| {
        objects
            .of_kind("ConfigMap")
            .find(|c| c.name == "node-local-dns" || c.name == "nodelocaldns")
    });
    if let Some(config_map) = config_map
        && let Some(corefile) = corefile_of(config_map, notes)
    {
        force_tcp(&corefile, config_map, objects, findings);
    }
    let Some(daemon_set) = daemon_set else {
        return;
    };
    sgp_strict(objects, daemon_set, findings, notes);
}

/// `force_tcp` in any forward block of a Corefile (CoreDNS's or NodeLocal DNSCache's).
/// Toward the VPC resolver it is critical; toward the cluster DNS (NodeLocal DNSCache's
/// upstream manifest does so on purpose, to CoreDNS) it is only worth knowing.
pub(super) fn force_tcp(
    corefile: &Corefile,
    config_map: &Object,
    objects: &Objects,
    findings: &mut Vec<Finding>,
) {
    // The cluster DNS Services' addresses.
    let cluster_dns: Vec<&str> = objects
        .of_kind("Service")
        .filter(|s| s.name == "kube-dns" || s.name == "kube-dns-upstream")
        .filter_map(|s| s.at(&["spec", "clusterIP"])?.as_str())
        .collect();
    for block in &corefile.blocks {
        for forward in block.plugins("forward") {
            if forward.sub("force_tcp").is_none() {
                continue;
            }
            let targets = forward.args.get(1..).unwrap_or_default();
            let is = |t: &String, set: &[&str]| {
                let host = t.rsplit_once(':').map_or(t.as_str(), |(h, _)| h);
                set.contains(&t.as_str()) || set.contains(&host)
            };
            let (severity, why) = if targets.iter().any(|t| is(t, &VPC_RESOLVER_TARGETS)) {
                (
                    Severity::Critical,
                    "every query becomes a TCP connection to the node's resolver, on EKS the \
                     VPC resolver, which serves two TCP connections at once per source: under \
                     load queries queue, time out and fail",
                )
            } else if !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| is(t, &["__PILLAR__CLUSTER__DNS__"]) || is(t, &cluster_dns))
            {
                (
                    Severity::Info,
                    "queries to the cluster DNS go over TCP, as NodeLocal DNSCache's manifest \
                     has it on purpose (no UDP conntrack races toward CoreDNS), at the cost of \
                     CoreDNS connections",
                )
            } else {
                (
                    Severity::Warning,
                    "every query becomes a TCP connection (a handshake, a connection slot and \
                     a conntrack entry each) to a server that answers UDP fine",
                )
            };
            findings.push(finding(
                "forward-force-tcp",
                severity,
                config_map,
                format!(
                    "forward {} to {} has force_tcp (server block {})",
                    forward.args.first().map_or(".", String::as_str),
                    targets.join(" "),
                    block.keys.join(" ")
                ),
                why,
                if severity == Severity::Info {
                    "nothing, unless CoreDNS's TCP connections weigh: then prefer_udp".into()
                } else {
                    "replace force_tcp with prefer_udp (TCP only for truncated answers)".into()
                },
            ));
        }
    }
}

/// NodeLocal DNSCache with the VPC CNI's Security Groups for Pods in strict mode.
fn sgp_strict(
    objects: &Objects,
    daemon_set: &Object,
    findings: &mut Vec<Finding>,
    notes: &mut Vec<String>,
) {
    let Some(aws_node) = objects.find("DaemonSet", "kube-system", "aws-node") else {
        return;
    };
    let Some(cni) = aws_node.pod_template().and_then(|t| {
        containers(t).find(|c| c.get("name").and_then(Value::as_str) == Some("aws-node"))
    }) else {
        return;
    };
    let (pod_eni, mode) = (
        env(cni, "ENABLE_POD_ENI"),
        env(cni, "POD_SECURITY_GROUP_ENFORCING_MODE"),
    );
    if pod_eni == Env::Unknown || mode == Env::Unknown {
        notes.push(format!(
            "{}: ENABLE_POD_ENI or POD_SECURITY_GROUP_ENFORCING_MODE is set from a reference: \
             nodelocal-sgp-strict not checked",
            aws_node.label()
        ));
        return;
    }
    if !pod_eni.is_true() {
        return;
    }
    // Unset means strict, the VPC CNI's default.
    let mode = mode.value().unwrap_or("strict");
    if mode != "strict" {
        return;
    }
    let policies: Vec<String> = objects
        .of_kind("SecurityGroupPolicy")
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let (severity, which) = if policies.is_empty() {
        (
            Severity::Info,
            "no SecurityGroupPolicy was read: the pods any one selects will lose DNS".to_owned(),
        )
    } else {
        (
            Severity::Critical,
            format!("SecurityGroupPolicies: {}", policies.join(", ")),
        )
    };
    findings.push(finding(
        "nodelocal-sgp-strict",
        severity,
        daemon_set,
        format!(
            "NodeLocal DNSCache runs while aws-node has ENABLE_POD_ENI=true and \
             POD_SECURITY_GROUP_ENFORCING_MODE={mode} ({which})"
        ),
        "in strict mode a pod with its own security groups sends all traffic through its \
         branch ENI, so it cannot reach NodeLocal DNSCache's link-local address on the node: \
         those pods silently lose DNS",
        "set POD_SECURITY_GROUP_ENFORCING_MODE=standard on aws-node, or keep pods with \
         security groups off NodeLocal DNSCache (dnsPolicy or dnscore in the pod)"
            .into(),
    ));
}
