//! Workloads: `ndots:5` without a cache in the pod, and dnscore pods whose grace period
//! ends before the sidecar's lameduck.

use std::time::Duration;

use serde_json::Value;

use super::{duration, finding, grace_period};
use crate::doctor::objects::{Object, Objects};
use crate::doctor::{Finding, Severity};
use crate::inject::{CONTAINER_NAME, INJECT_ANNOTATION, INJECTED_ANNOTATION};
use dnscore::settings::format_duration;

/// The workload kinds checked (bare pods only when no controller owns them).
const WORKLOADS: [&str; 6] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "Pod",
];
/// Namespaces of the cluster's own components, not checked for ndots.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

pub(super) fn check(objects: &Objects, findings: &mut Vec<Finding>) {
    // Namespaces the webhook injects into (when the Namespaces were read).
    let webhook_namespaces: Vec<&str> = objects
        .of_kind("Namespace")
        .filter(|n| {
            n.at(&["metadata", "labels", INJECT_ANNOTATION])
                .and_then(Value::as_str)
                == Some("enabled")
        })
        .map(|n| n.name.as_str())
        .collect();
    for object in objects
        .objects
        .iter()
        .filter(|o| WORKLOADS.contains(&o.kind.as_str()))
    {
        if object.kind == "Pod" && object.at(&["metadata", "ownerReferences"]).is_some() {
            continue;
        }
        // A Job a CronJob made is checked through the CronJob.
        if object.kind == "Job" && object.at(&["metadata", "ownerReferences"]).is_some() {
            continue;
        }
        let Some(template) = object.pod_template() else {
            continue;
        };
        match sidecar(template) {
            Some(sidecar) => grace(object, template, Some(sidecar), findings),
            // Injected when its pods are created, by the webhook: the template says so only
            // through the labels that select it.
            None if by_webhook(object, template, &webhook_namespaces) => {
                grace(object, template, None, findings);
            }
            None => ndots(object, template, findings),
        }
    }
}

/// The dnscore sidecar of a pod template, if it was injected.
fn sidecar(template: &Value) -> Option<&Value> {
    let injected = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(INJECTED_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true");
    let init = template.get("spec")?.get("initContainers")?.as_array()?;
    let sidecar = init
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))?;
    (injected || sidecar.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
        .then_some(sidecar)
}

/// Whether the webhook injects this workload's pods: its namespace or its pod template is
/// labelled `dnscore.io/inject: enabled`, and it is not opted out.
fn by_webhook(object: &Object, template: &Value, webhook_namespaces: &[&str]) -> bool {
    let meta = |key: &str| {
        template
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(|m| m.get(INJECT_ANNOTATION))
            .and_then(Value::as_str)
    };
    let opted_out = meta("labels") == Some("disabled") || meta("annotations") == Some("disabled");
    !opted_out
        && (meta("labels") == Some("enabled")
            || webhook_namespaces.contains(&object.namespace.as_str()))
}

/// The lameduck of a sidecar the webhook will add: the `dnscore.io/lameduck` annotation,
/// else the default (the webhook's own `--lameduck` is not in the cluster's objects).
fn webhook_lameduck(template: &Value) -> Duration {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get("dnscore.io/lameduck"))
        .and_then(Value::as_str)
        .and_then(duration)
        .unwrap_or(crate::config::DEFAULT_LAMEDUCK)
}

/// The sidecar's `--lameduck` (`--lameduck=5s` or `--lameduck 5s`, or `DNSCORE_LAMEDUCK`),
/// or its default.
fn lameduck(sidecar: &Value) -> Duration {
    let args: Vec<&str> = sidecar
        .get("args")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let value = args.iter().enumerate().find_map(|(i, arg)| {
        arg.strip_prefix("--lameduck=").or_else(|| {
            (*arg == "--lameduck")
                .then(|| args.get(i + 1).copied())
                .flatten()
        })
    });
    value
        .or_else(|| super::env(sidecar, "DNSCORE_LAMEDUCK").value())
        .and_then(duration)
        .unwrap_or(crate::config::DEFAULT_LAMEDUCK)
}

fn grace(object: &Object, template: &Value, sidecar: Option<&Value>, findings: &mut Vec<Finding>) {
    let lameduck = sidecar.map_or_else(|| webhook_lameduck(template), lameduck);
    let grace = grace_period(template);
    if grace > lameduck.as_secs() {
        return;
    }
    findings.push(finding(
        "dnscore-grace-period",
        Severity::Warning,
        object,
        format!(
            "terminationGracePeriodSeconds ({grace}) is not longer than the dnscore sidecar's \
             lameduck ({})",
            format_duration(lameduck)
        ),
        "the kubelet kills the pod before the sidecar's lameduck ends, so the app's last \
         lookups while it drains may find no DNS",
        format!(
            "terminationGracePeriodSeconds: {} or more, or a shorter --lameduck \
             (dnscore.io/lameduck)",
            lameduck.as_secs() + 10
        ),
    ));
}

fn ndots(object: &Object, template: &Value, findings: &mut Vec<Finding>) {
    if SYSTEM_NAMESPACES.contains(&object.namespace.as_str()) {
        return;
    }
    let spec = template.get("spec").unwrap_or(&Value::Null);
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let policy = spec
        .get("dnsPolicy")
        .and_then(Value::as_str)
        .unwrap_or("ClusterFirst");
    if !matches!(policy, "ClusterFirst" | "ClusterFirstWithHostNet") {
        return;
    }
    let ndots_set = spec
        .get("dnsConfig")
        .and_then(|c| c.get("options"))
        .and_then(Value::as_array)
        .is_some_and(|o| {
            o.iter()
                .any(|o| o.get("name").and_then(Value::as_str) == Some("ndots"))
        });
    if ndots_set {
        return;
    }
    findings.push(finding(
        "ndots-default",
        Severity::Info,
        object,
        "the pods resolve with the cluster default ndots:5 and no cache in the pod".into(),
        "a lookup of an external name such as api.example.com first tries every search domain: \
         up to 10 queries (A and AAAA), most of them NXDOMAIN, each a conntrack entry and \
         CoreDNS work",
        "inject dnscore (`dnscore-sidecar inject`, or label the namespace \
         dnscore.io/inject=enabled), which answers the repeats from its cache, or set \
         dnsConfig.options ndots: \"2\" and write external names with a trailing dot"
            .into(),
    ));
}
