//! `dnscore-sidecar doctor`: reads the cluster objects that decide DNS health and says what
//! will break, before it does.
//!
//! Every outage behind this project ended with a list of settings nobody had checked:
//! CoreDNS at 2 replicas with no autoscaler, on spot nodes, with a 5 s lameduck; Karpenter
//! without its interruption queue; conntrack tables too small for the node's pods;
//! NodeLocal DNSCache forcing TCP toward a resolver that serves two TCP connections, or cut
//! off from pods with security groups. [`check`] reads [`Objects`] (from files, or listed
//! from the API server by [`live`]) and returns [`Finding`]s, each with a stable check
//! name (see [`CHECKS`]), a severity, the object, what is wrong, why it matters and the fix.
//!
//! Nothing here writes to the cluster; the live mode needs `get` and `list` only (the
//! ClusterRole in `deploy/doctor-rbac.yaml`).

pub(crate) mod checks;
pub mod corefile;
pub mod live;
pub mod objects;

use serde::Serialize;

pub use objects::{InputError, Object, Objects};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; not a failure.
    Info,
    /// Will hurt under load, on a disruption or at the next change.
    Warning,
    /// Breaks DNS, now or at the next disruption.
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that a width given (the table's column) applies.
        f.pad(match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        })
    }
}

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's stable name (one of [`CHECKS`]).
    pub check: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// The object's kind.
    pub kind: String,
    /// Its namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub problem: String,
    /// Why it matters, in one sentence.
    pub why: String,
    /// What to do.
    pub fix: String,
}

/// Every check, by its stable name, with what it looks at.
pub const CHECKS: [(&str, &str); 14] = [
    ("coredns-replicas", "CoreDNS runs fewer than 3 replicas"),
    (
        "coredns-autoscaling",
        "no HPA or cluster-proportional-autoscaler scales CoreDNS",
    ),
    ("coredns-pdb", "no PodDisruptionBudget covers CoreDNS"),
    (
        "coredns-spread",
        "no topology spread or anti-affinity for CoreDNS",
    ),
    (
        "coredns-spot",
        "CoreDNS can run on spot or interruptible nodes",
    ),
    (
        "coredns-lameduck",
        "the health plugin's lameduck is missing or under 30 s",
    ),
    (
        "coredns-grace-period",
        "terminationGracePeriodSeconds not longer than the lameduck",
    ),
    ("coredns-ready", "the ready plugin is missing"),
    (
        "forward-force-tcp",
        "force_tcp in a forward block (CoreDNS or NodeLocal DNSCache)",
    ),
    (
        "nodelocal-sgp-strict",
        "NodeLocal DNSCache with Security Groups for Pods in strict mode",
    ),
    (
        "conntrack-capacity",
        "kube-proxy's conntrack limit against the nodes' pods",
    ),
    (
        "karpenter-interruption-queue",
        "Karpenter without an interruption queue",
    ),
    (
        "ndots-default",
        "a workload left at ndots:5 without dnscore",
    ),
    (
        "dnscore-grace-period",
        "a dnscore pod's grace period not longer than its lameduck",
    ),
];

/// Runs every check not in `skip` over `objects`; findings come most severe first. Notes
/// on checks that could not run (an object they need is missing) are added to `notes`.
pub fn check(objects: &Objects, skip: &[String], notes: &mut Vec<String>) -> Vec<Finding> {
    let mut findings = checks::run(objects, notes);
    findings.retain(|f| !skip.iter().any(|s| s == f.check));
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.check.cmp(b.check))
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    findings
}

/// The exit status for these findings: 1 when any is a warning or worse, else 0.
pub fn exit_status(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.severity >= Severity::Warning))
}

/// The findings as a readable report.
pub fn table(findings: &[Finding]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if findings.is_empty() {
        out.push_str("no findings\n");
        return out;
    }
    for f in findings {
        let object = if f.namespace.is_empty() {
            format!("{} {}", f.kind, f.name)
        } else {
            format!("{} {}/{}", f.kind, f.namespace, f.name)
        };
        let _ = writeln!(out, "{:<8} {:<28} {object}", f.severity, f.check);
        let _ = writeln!(out, "         {}", f.problem);
        let _ = writeln!(out, "         why: {}", f.why);
        let _ = writeln!(out, "         fix: {}", f.fix);
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        out,
        "{} critical, {} warning, {} info",
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info)
    );
    out
}

/// The findings as a JSON array (the fields of [`Finding`]).
pub fn json(findings: &[Finding]) -> String {
    serde_json::to_string_pretty(findings).unwrap_or_else(|_| "[]".to_owned())
}
