//! One object: where its pod template is, whether it must be left alone, and the changes to
//! its pod spec (the sidecar, the DNS settings, the port sysctl, the annotation).

use std::net::Ipv4Addr;

use serde_norway::{Mapping, Sequence, Value};

use super::container::sidecar_container;

/// The API server's limits on a pod's search list.
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;
/// resolv.conf `timeout` with a fallback nameserver: seconds per try.
const FALLBACK_TIMEOUT: u8 = 1;
/// resolv.conf `attempts` with a fallback nameserver: tries of each nameserver.
const FALLBACK_ATTEMPTS: u8 = 2;
use super::{
    CONTAINER_NAME, DEFAULT_GRACE_SECONDS, INJECT_ANNOTATION, INJECTED_ANNOTATION, InjectError,
    InjectOptions, OPTION_ANNOTATIONS, ObjectReport, Outcome, SkipReason, UNPRIVILEGED_PORT_SYSCTL,
};

/// The context of one document.
pub(crate) struct Doc<'a> {
    pub(crate) document: usize,
    pub(crate) options: &'a InjectOptions,
}

impl Doc<'_> {
    /// Handles one object (and a `List`'s items), adding a report for each with a kind.
    pub(crate) fn object(
        &self,
        object: &mut Mapping,
        reports: &mut Vec<ObjectReport>,
    ) -> Result<(), InjectError> {
        let Some(kind) = object
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Ok(());
        };
        if kind == "List" {
            if let Some(Value::Sequence(items)) = object.get_mut("items") {
                for item in items {
                    if let Value::Mapping(item) = item {
                        self.object(item, reports)?;
                    }
                }
            }
            return Ok(());
        }
        let name = object
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let mut report = ObjectReport {
            document: self.document,
            kind,
            name,
            outcome: Outcome::NotAWorkload,
            notes: Vec::new(),
        };
        let template_path: &[&str] = match report.kind.as_str() {
            "Pod" => &[],
            "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "ReplicationController"
            | "Job" => &["spec", "template"],
            "CronJob" => &["spec", "jobTemplate", "spec", "template"],
            _ => {
                reports.push(report);
                return Ok(());
            }
        };
        let namespace = object
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or(&self.options.namespace)
            .to_owned();
        // The annotation counts on the workload's own metadata and on its pod template's.
        let workload_opted_out = opted_out(object);
        let template = self.descend(object, template_path, &report)?;
        report.outcome = if workload_opted_out || opted_out(template) {
            Outcome::Skipped(SkipReason::OptedOut)
        } else {
            let (options, unknown) = self
                .options
                .with_annotations(annotations(template))
                .map_err(|source| InjectError::Annotation {
                    document: self.document,
                    kind: report.kind.clone(),
                    name: report.name.clone(),
                    source: Box::new(source),
                })?;
            if !unknown.is_empty() {
                report.notes.push(format!(
                    "unknown annotations ignored: {} (known: dnscore.io/ and {})",
                    unknown.join(", "),
                    OPTION_ANNOTATIONS.join(", ")
                ));
            }
            let doc = Doc {
                document: self.document,
                options: &options,
            };
            doc.pod_template(template, &namespace, &mut report)?
        };
        reports.push(report);
        Ok(())
    }

    /// Follows `path` down from `object` through mappings.
    fn descend<'m>(
        &self,
        mut map: &'m mut Mapping,
        path: &[&str],
        report: &ObjectReport,
    ) -> Result<&'m mut Mapping, InjectError> {
        for (depth, key) in path.iter().enumerate() {
            map = match map.get_mut(*key) {
                Some(Value::Mapping(child)) => child,
                _ => return Err(self.malformed(report, &path[..=depth], "a mapping")),
            };
        }
        Ok(map)
    }

    fn malformed(
        &self,
        report: &ObjectReport,
        path: &[&str],
        expected: &'static str,
    ) -> InjectError {
        InjectError::Malformed {
            document: self.document,
            kind: report.kind.clone(),
            name: report.name.clone(),
            path: path.join("."),
            expected,
        }
    }

    /// Injects into a pod template (`metadata` + `spec`), or says why not.
    fn pod_template(
        &self,
        template: &mut Mapping,
        namespace: &str,
        report: &mut ObjectReport,
    ) -> Result<Outcome, InjectError> {
        let Some(Value::Mapping(spec)) = template.get_mut("spec") else {
            return Err(self.malformed(report, &["spec"], "a mapping"));
        };
        if let Some(reason) = skip_reason(spec, self.options.metrics_listen.port()) {
            return Ok(Outcome::Skipped(reason));
        }
        self.sidecar_into(spec, report)?;
        self.dns_into(spec, namespace, report)?;
        if self.options.unprivileged_port_sysctl {
            self.sysctl_into(spec, report)?;
        }
        let grace = spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        if self.options.lameduck.as_secs() >= grace {
            report.notes.push(format!(
                "terminationGracePeriodSeconds ({grace}) is not longer than the lameduck \
                 ({}s): the sidecar may be killed while draining",
                self.options.lameduck.as_secs()
            ));
        }
        let annotations = child_mapping(template, "metadata")
            .and_then(|metadata| child_mapping(metadata, "annotations"))
            .ok_or_else(|| self.malformed(report, &["metadata", "annotations"], "a mapping"))?;
        annotations.insert(INJECTED_ANNOTATION.into(), Value::String("true".to_owned()));
        Ok(Outcome::Injected)
    }

    /// Puts the sidecar first in `initContainers`, replacing the one already there.
    fn sidecar_into(&self, spec: &mut Mapping, report: &ObjectReport) -> Result<(), InjectError> {
        let sidecar = Value::Mapping(sidecar_container(self.options));
        if !spec.contains_key("initContainers") {
            insert_before(
                spec,
                "initContainers",
                Value::Sequence(Vec::new()),
                "containers",
            );
        }
        let Some(Value::Sequence(init)) = spec.get_mut("initContainers") else {
            return Err(self.malformed(report, &["spec", "initContainers"], "a list"));
        };
        match init
            .iter()
            .position(|c| container_name(c) == Some(CONTAINER_NAME))
        {
            // First even if something moved it: the init containers after it need DNS.
            Some(index) => {
                init.remove(index);
                init.insert(0, sidecar);
            }
            None => init.insert(0, sidecar),
        }
        Ok(())
    }

    /// Sets `dnsPolicy: None` and the `dnsConfig` pointing at the sidecar. Searches of the
    /// pod's own are kept after the cluster's; options are kept, `ndots` set only when
    /// forced or missing.
    fn dns_into(
        &self,
        spec: &mut Mapping,
        namespace: &str,
        report: &mut ObjectReport,
    ) -> Result<(), InjectError> {
        let domain = &self.options.cluster_domain;
        let mut searches: Vec<Value> = [
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ]
        .into_iter()
        .map(Value::String)
        .collect();
        let old = match spec.get("dnsConfig") {
            None | Some(Value::Null) => Mapping::new(),
            Some(Value::Mapping(old)) => old.clone(),
            Some(_) => return Err(self.malformed(report, &["spec", "dnsConfig"], "a mapping")),
        };
        let mut ours = vec![Value::String(Ipv4Addr::LOCALHOST.to_string())];
        ours.extend(
            self.options
                .fallback_nameserver
                .map(|ip| Value::String(ip.to_string())),
        );
        if let Some(Value::Sequence(servers)) = old.get("nameservers") {
            let dropped: Vec<&str> = servers
                .iter()
                .filter(|s| !ours.contains(s))
                .filter_map(Value::as_str)
                .collect();
            if !dropped.is_empty() {
                report.notes.push(format!(
                    "dropped extra nameservers {} (pass them as upstreams to keep them)",
                    dropped.join(", ")
                ));
            }
        }
        if let Some(Value::Sequence(old_searches)) = old.get("searches") {
            for search in old_searches {
                if !searches.contains(search) {
                    searches.push(search.clone());
                }
            }
        }
        // The API server refuses more (validation of dnsConfig, since Kubernetes 1.28).
        let chars: usize = searches
            .iter()
            .filter_map(Value::as_str)
            .map(str::len)
            .sum();
        if searches.len() > MAX_SEARCHES || chars > MAX_SEARCH_CHARS {
            return Err(self.malformed(
                report,
                &["spec", "dnsConfig", "searches"],
                "at most 32 search domains of 2048 characters in all, with the cluster's three",
            ));
        }
        let mut options = match old.get("options") {
            Some(Value::Sequence(options)) => options.clone(),
            _ => Sequence::new(),
        };
        let ndots_at = options.iter().position(|o| option_name(o) == Some("ndots"));
        let option = |name: &str, n: u8| {
            let mut option = Mapping::new();
            option.insert("name".into(), name.into());
            option.insert("value".into(), Value::String(n.to_string()));
            Value::Mapping(option)
        };
        match (ndots_at, self.options.ndots) {
            (Some(at), Some(n)) => options[at] = option("ndots", n),
            (Some(_), None) => {}
            (None, n) => options.insert(0, option("ndots", n.unwrap_or(5))),
        }
        if self.options.fallback_nameserver.is_some() {
            // glibc's default is 5 s per try: a dead loopback port refuses at once, but a
            // sidecar that is up and slow should not hold the pod's lookups that long.
            for (name, value) in [
                ("timeout", FALLBACK_TIMEOUT),
                ("attempts", FALLBACK_ATTEMPTS),
            ] {
                let wanted = option(name, value);
                match options.iter().position(|o| option_name(o) == Some(name)) {
                    Some(at) => options[at] = wanted,
                    None => options.push(wanted),
                }
            }
        }
        let mut config = Mapping::new();
        config.insert("nameservers".into(), Value::Sequence(ours));
        config.insert("searches".into(), Value::Sequence(searches));
        config.insert("options".into(), Value::Sequence(options));
        for (key, value) in old {
            if !config.contains_key(&key) {
                config.insert(key, value);
            }
        }
        spec.insert("dnsPolicy".into(), "None".into());
        spec.insert("dnsConfig".into(), Value::Mapping(config));
        Ok(())
    }

    /// Makes sure the pod sysctl lets a non-root process bind port 53.
    fn sysctl_into(
        &self,
        spec: &mut Mapping,
        report: &mut ObjectReport,
    ) -> Result<(), InjectError> {
        let path = ["spec", "securityContext", "sysctls"];
        let Some(context) = child_mapping(spec, "securityContext") else {
            return Err(self.malformed(report, &path[..2], "a mapping"));
        };
        if !context.contains_key("sysctls") {
            context.insert("sysctls".into(), Value::Sequence(Vec::new()));
        }
        let Some(Value::Sequence(sysctls)) = context.get_mut("sysctls") else {
            return Err(self.malformed(report, &path, "a list"));
        };
        let wanted = || {
            let mut sysctl = Mapping::new();
            sysctl.insert("name".into(), UNPRIVILEGED_PORT_SYSCTL.into());
            sysctl.insert("value".into(), "53".into());
            Value::Mapping(sysctl)
        };
        match sysctls
            .iter()
            .position(|s| s.get("name").and_then(Value::as_str) == Some(UNPRIVILEGED_PORT_SYSCTL))
        {
            None => sysctls.push(wanted()),
            Some(at) => {
                let value = sysctls[at].get("value");
                let port = value.and_then(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .or_else(|| v.as_u64().map(|n| n.to_string()))
                });
                if port
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|p| p > 53)
                {
                    report
                        .notes
                        .push(format!("lowered {UNPRIVILEGED_PORT_SYSCTL} to 53"));
                    sysctls[at] = wanted();
                }
            }
        }
        Ok(())
    }
}

/// Why a pod spec must not get the sidecar, if it must not.
fn skip_reason(spec: &Mapping, metrics_port: u16) -> Option<SkipReason> {
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Some(SkipReason::HostNetwork);
    }
    let windows = spec
        .get("os")
        .and_then(|os| os.get("name"))
        .and_then(Value::as_str)
        == Some("windows")
        || spec
            .get("nodeSelector")
            .and_then(|s| s.get("kubernetes.io/os"))
            .and_then(Value::as_str)
            == Some("windows");
    if windows {
        return Some(SkipReason::Windows);
    }
    let list = |key: &str| match spec.get(key) {
        Some(Value::Sequence(list)) => list.as_slice(),
        _ => &[],
    };
    let names = |key: &str| {
        list(key)
            .iter()
            .filter_map(container_name)
            .collect::<Vec<_>>()
    };
    if names("containers").contains(&CONTAINER_NAME) {
        return Some(SkipReason::NameTaken);
    }
    let port_taken = list("containers")
        .iter()
        .chain(list("initContainers"))
        .filter(|c| container_name(c) != Some(CONTAINER_NAME))
        .filter_map(|c| c.get("ports").and_then(Value::as_sequence))
        .flatten()
        .any(|p| p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(metrics_port)));
    if port_taken {
        return Some(SkipReason::PortTaken(metrics_port));
    }
    match spec.get("dnsPolicy").and_then(Value::as_str) {
        Some("Default") => Some(SkipReason::NodeDns),
        Some("None") if !names("initContainers").contains(&CONTAINER_NAME) => {
            let own = spec
                .get("dnsConfig")
                .and_then(|c| c.get("nameservers"))
                .and_then(Value::as_sequence)
                .is_some_and(|servers| servers.iter().any(|s| s.as_str() != Some("127.0.0.1")));
            own.then_some(SkipReason::CustomNameservers)
        }
        _ => None,
    }
}

/// The string-valued annotations of an object or pod template.
fn annotations(object: &Mapping) -> impl Iterator<Item = (&str, &str)> {
    object
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?, v.as_str()?)))
}

/// Whether an object (a workload, or a pod template) carries `dnscore.io/inject: disabled`.
fn opted_out(template: &Mapping) -> bool {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .and_then(Value::as_str)
        == Some("disabled")
}

fn option_name(option: &Value) -> Option<&str> {
    option.get("name").and_then(Value::as_str)
}

fn container_name(container: &Value) -> Option<&str> {
    container.get("name").and_then(Value::as_str)
}

/// The mapping at `key`, created empty when missing or null; `None` when it is something else.
fn child_mapping<'m>(map: &'m mut Mapping, key: &str) -> Option<&'m mut Mapping> {
    if matches!(map.get(key), None | Some(Value::Null)) {
        map.insert(key.into(), Value::Mapping(Mapping::new()));
    }
    match map.get_mut(key) {
        Some(Value::Mapping(child)) => Some(child),
        _ => None,
    }
}

/// Inserts `key` just before `before` (or last when `before` is missing), for readable
/// output: `initContainers` reads best above `containers`.
fn insert_before(map: &mut Mapping, key: &str, value: Value, before: &str) {
    let mut rebuilt = Mapping::with_capacity(map.len() + 1);
    let mut value = Some(value);
    for (k, v) in std::mem::take(map) {
        if k.as_str() == Some(before)
            && let Some(value) = value.take()
        {
            rebuilt.insert(key.into(), value);
        }
        rebuilt.insert(k, v);
    }
    if let Some(value) = value {
        rebuilt.insert(key.into(), value);
    }
    *map = rebuilt;
}
