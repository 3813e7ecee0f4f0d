//! NodeLocal DNSCache: `force_tcp` in its forward blocks (and CoreDNS's), and pods with
//! security groups that it cannot reach.

use serde_json::Value;

use super::{containers, corefile_of, env, finding};
use crate::doctor::corefile::Corefile;
use crate::doctor::objects::{Object, Objects};
use crate::doctor::{Finding, Severity};

/// Forward targets that are the VPC resolver on EKS nodes (a node's resolv.conf names it).
const VPC_RESOLVER_TARGETS: [&str; 3] = [
    "/etc/resolv.conf",
    "__PILLAR__UPSTREAM__SERVERS__",
    "169.254.169.253",
];

/// NodeLocal DNSCache's DaemonSet (`node-local-dns` in any namespace).
fn daemon_set(objects: &Objects) -> Option<&Object> {
    objects
        .of_kind("DaemonSet")
        .find(|d| d.name == "node-local-dns")
}

pub(super) fn check(objects: &Objects, findings: &mut Vec<Finding>) {
    let daemon_set = daemon_set(objects);
    let config_map = objects
        .of_kind("ConfigMap")
        .find(|c| c.name == "node-local-dns");
    if let Some(config_map) = config_map {
        let mut notes = Vec::new();
        if let Some(corefile) = corefile_of(config_map, &mut notes) {
            force_tcp(&corefile, config_map, findings);
        }
    }
    let Some(daemon_set) = daemon_set else {
        return;
    };
    sgp_strict(objects, daemon_set, findings);
}

/// `force_tcp` in any forward block of a Corefile (CoreDNS's or NodeLocal DNSCache's).
pub(super) fn force_tcp(corefile: &Corefile, config_map: &Object, findings: &mut Vec<Finding>) {
    for block in &corefile.blocks {
        for forward in block.plugins("forward") {
            if forward.sub("force_tcp").is_none() {
                continue;
            }
            let targets = forward.args.get(1..).unwrap_or_default();
            let vpc = targets
                .iter()
                .any(|t| VPC_RESOLVER_TARGETS.contains(&t.as_str()));
            let (severity, why) = if vpc {
                (
                    Severity::Critical,
                    "every query becomes a TCP connection to the VPC resolver, which serves two \
                     TCP connections at once per source: under load queries queue, time out and \
                     fail",
                )
            } else {
                (
                    Severity::Warning,
                    "every query becomes a TCP connection (a handshake, a connection slot and a \
                     conntrack entry each) to a server that answers UDP fine",
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
                "replace force_tcp with prefer_udp (TCP only for truncated answers)".into(),
            ));
        }
    }
}

/// NodeLocal DNSCache with the VPC CNI's Security Groups for Pods in strict mode.
fn sgp_strict(objects: &Objects, daemon_set: &Object, findings: &mut Vec<Finding>) {
    let Some(aws_node) = objects.find("DaemonSet", "kube-system", "aws-node") else {
        return;
    };
    let Some(cni) = aws_node.pod_template().and_then(|t| {
        containers(t).find(|c| c.get("name").and_then(Value::as_str) == Some("aws-node"))
    }) else {
        return;
    };
    if env(cni, "ENABLE_POD_ENI") != Some("true") {
        return;
    }
    let mode = env(cni, "POD_SECURITY_GROUP_ENFORCING_MODE").unwrap_or("strict");
    if mode != "strict" {
        return;
    }
    let policies: Vec<String> = objects
        .of_kind("SecurityGroupPolicy")
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let (severity, which) = if policies.is_empty() {
        (
            Severity::Warning,
            "no SecurityGroupPolicy was read; any added later applies".to_owned(),
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
