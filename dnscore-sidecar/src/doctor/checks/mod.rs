//! The checks, by what they look at: CoreDNS ([`coredns`]), NodeLocal DNSCache and the VPC
//! CNI ([`nodelocal`]), nodes, kube-proxy and Karpenter ([`nodes`]), and workloads
//! ([`workloads`]).

mod coredns;
mod nodelocal;
mod nodes;
mod workloads;

use std::time::Duration;

use serde_json::Value;

use super::corefile::{self, Corefile};
use super::objects::{Object, Objects};
use super::{Finding, Severity};

/// The pod's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: u64 = 30;

pub(super) fn run(objects: &Objects, notes: &mut Vec<String>) -> Vec<Finding> {
    let mut findings = Vec::new();
    coredns::check(objects, &mut findings, notes);
    nodelocal::check(objects, &mut findings);
    nodes::check(objects, &mut findings, notes);
    workloads::check(objects, &mut findings);
    findings
}

/// A finding about `object`.
fn finding(
    check: &'static str,
    severity: Severity,
    object: &Object,
    problem: String,
    why: &str,
    fix: String,
) -> Finding {
    Finding {
        check,
        severity,
        kind: object.kind.clone(),
        namespace: object.namespace.clone(),
        name: object.name.clone(),
        problem,
        why: why.to_owned(),
        fix,
    }
}

/// The Corefile of a ConfigMap (`data.Corefile`), parsed; its note, if any, goes to `notes`.
fn corefile_of(config_map: &Object, notes: &mut Vec<String>) -> Option<Corefile> {
    let text = config_map.at(&["data", "Corefile"])?.as_str()?;
    let corefile = corefile::parse(text);
    if let Some(note) = &corefile.note {
        notes.push(format!(
            "{}: Corefile read in part: {note}",
            config_map.label()
        ));
    }
    Some(corefile)
}

/// The containers and init containers of a pod template's spec.
fn containers(template: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers"]
        .into_iter()
        .filter_map(|key| template.get("spec")?.get(key)?.as_array())
        .flatten()
}

/// A container's environment variable, when it has a literal value.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
}

/// A pod template's `terminationGracePeriodSeconds`, or the default.
fn grace_period(template: &Value) -> u64 {
    template
        .get("spec")
        .and_then(|s| s.get("terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_GRACE)
}

/// A duration as CoreDNS and dnscore write them (`5s`, `1500ms`, `1m`).
fn duration(text: &str) -> Option<Duration> {
    dnscore::settings::parse_duration(text)
}

fn seconds(d: Duration) -> String {
    dnscore::settings::format_duration(d)
}
