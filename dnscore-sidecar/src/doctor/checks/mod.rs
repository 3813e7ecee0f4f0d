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

pub(crate) use coredns::find as coredns;
pub(crate) use nodes::karpenter;

pub(super) fn run(objects: &Objects, notes: &mut Vec<String>) -> Vec<Finding> {
    let mut findings = Vec::new();
    coredns::check(objects, &mut findings, notes);
    nodelocal::check(objects, &mut findings, notes);
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

/// A container's environment variable, as far as the object tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Env<'a> {
    /// Set to this literal value.
    Value(&'a str),
    /// Set from a ConfigMap, Secret or field (`valueFrom`), or maybe by `envFrom`: not
    /// known from the object.
    Unknown,
    /// Not set.
    Absent,
}

impl<'a> Env<'a> {
    /// The literal value, if there is one.
    fn value(self) -> Option<&'a str> {
        match self {
            Self::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Whether it is set to a value Go's `strconv.ParseBool` reads as true.
    fn is_true(self) -> bool {
        self.value()
            .is_some_and(|v| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"))
    }
}

/// A container's environment variable; the last entry of a name wins, as in Kubernetes.
fn env<'a>(container: &'a Value, name: &str) -> Env<'a> {
    let entry = container
        .get("env")
        .and_then(Value::as_array)
        .and_then(|env| {
            env.iter()
                .rev()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        });
    match entry {
        Some(e) => match e.get("value").and_then(Value::as_str) {
            Some(v) => Env::Value(v),
            None if e.get("valueFrom").is_some() => Env::Unknown,
            None => Env::Value(""),
        },
        None if container.get("envFrom").is_some() => Env::Unknown,
        None => Env::Absent,
    }
}

/// A pod template's `terminationGracePeriodSeconds`, or the default.
fn grace_period(template: &Value) -> u64 {
    template
        .get("spec")
        .and_then(|s| s.get("terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_GRACE)
}

/// A duration as CoreDNS (Go's `time.ParseDuration`: `5s`, `1m30s`, `1.5s`) and dnscore
/// (`1500ms`, bare seconds) write them.
fn duration(text: &str) -> Option<Duration> {
    dnscore::settings::parse_duration(text).or_else(|| go_duration(text))
}

/// Go's duration syntax: numbers with units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`, in a row.
fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations_and_environment_values() {
        assert_eq!(duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(duration("soon"), None);
        assert_eq!(duration("5x"), None);
        let container = json!({"env": [
            {"name": "A", "value": "1"},
            {"name": "A", "value": "false"},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            {"name": "C", "value": "True"}
        ]});
        assert_eq!(env(&container, "A"), Env::Value("false"), "the last wins");
        assert_eq!(env(&container, "B"), Env::Unknown);
        assert!(env(&container, "C").is_true());
        assert_eq!(env(&container, "D"), Env::Absent);
        assert_eq!(env(&json!({"envFrom": [{}]}), "D"), Env::Unknown);
    }
}
