//! `dnscore-sidecar inject`: adds the sidecar to Kubernetes manifests, like `linkerd inject`.
//!
//! [`inject`] reads a YAML stream (one or many documents) and returns it with every pod
//! template changed so that the pod resolves through its own dnscore sidecar:
//!
//! - the sidecar is a *native sidecar*: the first entry of `initContainers`, with
//!   `restartPolicy: Always`. It starts before the other init containers and the app
//!   containers (a `startupProbe` on `/ready` holds them back until it answers), and it is
//!   stopped after them when the pod terminates (sidecars stop in reverse order, so the first
//!   one stops last);
//! - `dnsPolicy: None` and a `dnsConfig` naming `127.0.0.1` with the pod's own search list
//!   (`<namespace>.svc.<domain>`, `svc.<domain>`, `<domain>`) and `ndots`;
//! - the pod sysctl `net.ipv4.ip_unprivileged_port_start=53` (see [`InjectOptions`]);
//! - the annotation [`INJECTED_ANNOTATION`]`: "true"` on the pod template.
//!
//! Kinds and where their pod template is: `Pod` (the object itself), `Deployment`,
//! `StatefulSet`, `DaemonSet`, `ReplicaSet`, `ReplicationController`, `Job`
//! (`spec.template`), `CronJob` (`spec.jobTemplate.spec.template`); a `List` has each of
//! its `items` handled. Every other kind passes through byte for byte.
//!
//! # What is kept
//!
//! Documents that need no change (other kinds, skipped pods, pods already injected with the
//! same options) are copied byte for byte, comments and all, which makes `inject`
//! idempotent: injecting its own output changes nothing. A document that is changed is
//! written again from its parsed tree: its keys keep their order and every field the
//! injector does not own is kept, and the comment lines at its head are kept, but comments
//! inside it, quoting and flow styles, and anchors (expanded) are not.
//!
//! # Pods left alone, with the reason in the report
//!
//! `hostNetwork: true` (127.0.0.1:53 would be the node's), `dnsPolicy: Default` (the pod
//! chose the node's resolvers over cluster DNS), `dnsPolicy: None` with nameservers of its
//! own (the owner chose them: pass them as upstreams if they should be cached), a container
//! already named [`CONTAINER_NAME`] among the app containers, and the annotation
//! [`INJECT_ANNOTATION`]`: disabled` on the object or its pod template.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_norway::{Mapping, Sequence, Value};

/// Name of the sidecar container; a container of this name is taken to be the sidecar.
pub const CONTAINER_NAME: &str = "dnscore";
/// Annotation set to `"true"` on every pod template the injector changed.
pub const INJECTED_ANNOTATION: &str = "dnscore.io/injected";
/// Annotation that, set to `"disabled"` on an object or its pod template, opts it out.
pub const INJECT_ANNOTATION: &str = "dnscore.io/inject";
/// The sidecar image used unless [`InjectOptions::image`] says otherwise.
pub const DEFAULT_IMAGE: &str = "ghcr.io/dnscore/dnscore-sidecar:0.1.0";
/// The pod sysctl that lets a non-root process bind port 53 (see [`InjectOptions`]).
pub const UNPRIVILEGED_PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
/// The user and group the sidecar runs as: distroless's `nonroot`.
pub const SIDECAR_UID: i64 = 65_532;
/// Where the sidecar serves DNS: pods reach it as nameserver `127.0.0.1`.
const DNS_LISTEN: &str = "127.0.0.1:53";
/// resolv.conf caps `ndots` at 15 (glibc and musl alike).
const MAX_NDOTS: u8 = 15;
/// The pod's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: u64 = 30;

/// How to inject. [`Default`] gives the values each field documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    /// The sidecar image. Default: [`DEFAULT_IMAGE`].
    pub image: String,
    /// Where the sidecar forwards misses: the cluster DNS Service, never the pod's
    /// resolv.conf, which after injection names the sidecar itself. Default:
    /// `10.100.0.10:53`, kube-dns on EKS in a VPC outside 10.0.0.0/8 (it is `172.20.0.10`
    /// inside it; kubeadm uses `10.96.0.10`): check with
    /// `kubectl -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIP}'`.
    pub upstreams: Vec<SocketAddr>,
    /// A headless Service of the CoreDNS pods for the sidecar to follow (`--discover`).
    /// Default: none.
    pub discover: Option<String>,
    /// The namespace of objects whose `metadata.namespace` is unset (it picks the first
    /// search domain). Default: `default`. Set it when applying with `kubectl -n NS`.
    pub namespace: String,
    /// The cluster domain. Default: `cluster.local`.
    pub cluster_domain: String,
    /// `ndots` to force. Default: none, which keeps a pod's own `ndots` option or else
    /// sets the Kubernetes default, 5.
    pub ndots: Option<u8>,
    /// How long the sidecar keeps answering after SIGTERM while `/ready` fails
    /// (`--lameduck`). Default: [`DEFAULT_LAMEDUCK`](crate::config::DEFAULT_LAMEDUCK).
    pub lameduck: Duration,
    /// The sidecar's metrics and probe listener (`--metrics-listen`). Kubelet probes the
    /// pod IP, not loopback, so this must not be a loopback address. Default:
    /// `0.0.0.0:9153` (use `[::]:9153` in IPv6 clusters).
    pub metrics_listen: SocketAddr,
    /// Cached answers at most (`--cache-capacity`). Default: none, the sidecar's default.
    pub cache_capacity: Option<usize>,
    /// The sidecar's CPU request. Default: `25m`.
    pub cpu_request: String,
    /// The sidecar's memory request. Default: `32Mi`.
    pub memory_request: String,
    /// The sidecar's memory limit. Default: `64Mi`.
    pub memory_limit: String,
    /// Whether to set the pod sysctl [`UNPRIVILEGED_PORT_SYSCTL`] to 53. A non-root
    /// container never gets `capabilities.add` in its effective set (Kubernetes has no
    /// ambient capabilities, kubernetes/kubernetes#56374), so `NET_BIND_SERVICE` alone does
    /// not let the sidecar bind port 53; this namespaced, "safe" sysctl does. Turn it off
    /// only where the runtime grants the capability otherwise. Default: `true`.
    pub unprivileged_port_sysctl: bool,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            upstreams: vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 100, 0, 10)),
                53,
            )],
            discover: None,
            namespace: "default".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            ndots: None,
            lameduck: crate::config::DEFAULT_LAMEDUCK,
            metrics_listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                crate::config::METRICS_PORT,
            ),
            cache_capacity: None,
            cpu_request: "25m".to_owned(),
            memory_request: "32Mi".to_owned(),
            memory_limit: "64Mi".to_owned(),
            unprivileged_port_sysctl: true,
        }
    }
}

impl InjectOptions {
    /// Checks the options that would make a broken pod.
    pub fn validate(&self) -> Result<(), InjectError> {
        if self.upstreams.is_empty() && self.discover.is_none() {
            return Err(InjectError::NoUpstream);
        }
        if let Some(loopback) = self.upstreams.iter().find(|u| u.ip().is_loopback()) {
            return Err(InjectError::LoopbackUpstream(*loopback));
        }
        let invalid = |option, reason: &str| {
            Err(InjectError::InvalidOption {
                option,
                reason: reason.to_owned(),
            })
        };
        if self.metrics_listen.ip().is_loopback() {
            return invalid(
                "metrics_listen",
                "kubelet probes the pod IP: listen on 0.0.0.0 or [::]",
            );
        }
        if self.metrics_listen.port() == 53 || self.metrics_listen.port() == 0 {
            return invalid("metrics_listen", "needs a port other than 0 and 53");
        }
        if self.ndots.is_some_and(|n| n > MAX_NDOTS) {
            return invalid("ndots", "resolv.conf caps ndots at 15");
        }
        for (option, value) in [
            ("image", &self.image),
            ("namespace", &self.namespace),
            ("cluster_domain", &self.cluster_domain),
        ] {
            if value.trim().is_empty() {
                return invalid(option, "must not be empty");
            }
        }
        Ok(())
    }
}

/// Why [`inject`] wrote nothing. Each variant says what to fix.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// A document is not YAML: fix the input.
    #[error("document {document} (line {line}) is not valid YAML: {source}")]
    Parse {
        /// 1-based number of the document in the stream.
        document: usize,
        /// 1-based line where the document starts.
        line: usize,
        /// The parser's error (its location is relative to the document).
        source: Arc<serde_norway::Error>,
    },
    /// A workload has a field of the wrong shape where the pod template must be (e.g. a
    /// Deployment without `spec.template.spec`): fix the manifest.
    #[error("document {document} ({kind} {name}): {path} must be {expected}")]
    Malformed {
        /// 1-based number of the document in the stream.
        document: usize,
        /// The object's kind.
        kind: String,
        /// The object's `metadata.name`, or `?`.
        name: String,
        /// The offending field, dotted.
        path: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A changed document could not be written back (not expected to happen).
    #[error("document {document}: cannot write YAML: {source}")]
    Serialize {
        /// 1-based number of the document in the stream.
        document: usize,
        /// The emitter's error.
        source: Arc<serde_norway::Error>,
    },
    /// No upstream and no `discover`: the sidecar would forward to itself. Pass the
    /// cluster DNS Service, e.g. `--upstream 10.100.0.10:53`.
    #[error(
        "no upstream: pass the cluster DNS Service (e.g. --upstream 10.100.0.10:53); \
         the pod's resolv.conf will name the sidecar itself"
    )]
    NoUpstream,
    /// An upstream on loopback would be the sidecar itself (or nothing) inside the pod:
    /// pass the cluster DNS Service's address.
    #[error("upstream {0} is a loopback address, which inside the pod is the sidecar itself")]
    LoopbackUpstream(SocketAddr),
    /// An option has a value that would make a broken pod: change it.
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        /// The field of [`InjectOptions`].
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What [`inject`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectReport {
    /// The YAML stream, to write out as it is.
    pub output: String,
    /// One entry per object that has a kind (a `List`'s items each count), in input order.
    pub objects: Vec<ObjectReport>,
}

impl InjectReport {
    /// How many objects got the sidecar in this run.
    pub fn injected(&self) -> usize {
        self.objects
            .iter()
            .filter(|o| o.outcome == Outcome::Injected)
            .count()
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectReport {
    /// 1-based number of its document in the stream.
    pub document: usize,
    /// Its `kind`.
    pub kind: String,
    /// Its `metadata.name`, or `?`.
    pub name: String,
    /// What was done.
    pub outcome: Outcome,
    /// Things the user should know, e.g. a grace period shorter than the lameduck.
    pub notes: Vec<String>,
}

impl std::fmt::Display for ObjectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "document {}: {} {}: {}",
            self.document,
            self.kind.to_lowercase(),
            self.name,
            self.outcome
        )?;
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// What was done to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The sidecar was added, or brought up to date with the options.
    Injected,
    /// The sidecar was there already, exactly as these options make it: copied unchanged.
    AlreadyInjected,
    /// Not a kind with a pod template: copied unchanged.
    NotAWorkload,
    /// A pod that must not get the sidecar: copied unchanged.
    Skipped(SkipReason),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Injected => f.write_str("injected"),
            Self::AlreadyInjected => f.write_str("already injected"),
            Self::NotAWorkload => f.write_str("no pod template, unchanged"),
            Self::Skipped(reason) => write!(f, "skipped: {reason}"),
        }
    }
}

/// Why a pod is left without the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// `hostNetwork: true`: 127.0.0.1:53 would be the node's.
    HostNetwork,
    /// `dnsPolicy: Default`: the pod asked for the node's resolvers, not cluster DNS.
    NodeDns,
    /// `dnsPolicy: None` with nameservers of its own, which the owner chose.
    CustomNameservers,
    /// An app container (not an init container) is already named [`CONTAINER_NAME`].
    NameTaken,
    /// The annotation [`INJECT_ANNOTATION`]`: disabled`.
    OptedOut,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HostNetwork => "hostNetwork pod (127.0.0.1:53 would be the node's)",
            Self::NodeDns => "dnsPolicy Default (the pod uses the node's resolvers)",
            Self::CustomNameservers => "dnsPolicy None with its own nameservers",
            Self::NameTaken => "an app container is already named dnscore",
            Self::OptedOut => "annotation dnscore.io/inject: disabled",
        })
    }
}

/// Injects the sidecar into every pod template of the YAML stream `input`; see the module
/// docs for what changes and what is kept. Fails without output on invalid options, a
/// document that is not YAML, or a workload whose pod template has the wrong shape.
pub fn inject(input: &str, options: &InjectOptions) -> Result<InjectReport, InjectError> {
    options.validate()?;
    let mut output = String::with_capacity(input.len() + 2048);
    let mut objects = Vec::new();
    let mut document = 0;
    for chunk in split_documents(input) {
        if !has_content(chunk.text) {
            output.push_str(chunk.text);
            continue;
        }
        document += 1;
        let original: Value =
            serde_norway::from_str(chunk.text).map_err(|source| InjectError::Parse {
                document,
                line: chunk.line,
                source: Arc::new(source),
            })?;
        let mut changed = original.clone();
        let doc = Doc { document, options };
        let before = objects.len();
        if let Value::Mapping(object) = &mut changed {
            doc.object(object, &mut objects)?;
        }
        if changed == original {
            for report in &mut objects[before..] {
                if report.outcome == Outcome::Injected {
                    report.outcome = Outcome::AlreadyInjected;
                }
            }
            output.push_str(chunk.text);
        } else {
            let text =
                serde_norway::to_string(&changed).map_err(|source| InjectError::Serialize {
                    document,
                    source: Arc::new(source),
                })?;
            output.push_str(&head(chunk.text));
            output.push_str(&text);
        }
    }
    Ok(InjectReport { output, objects })
}

/// One document of a stream: its text, from its `---` line (if any) to the next one.
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line where it starts.
    line: usize,
}

/// Cuts a YAML stream at its document markers: a line that starts with `---` followed by
/// a space, a tab or the line's end (YAML 1.2 §9.1; such a line cannot occur inside a
/// scalar). Concatenating the chunks gives `input` back.
fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (index, line) in input.split_inclusive('\n').enumerate() {
        if is_marker(line) && offset > start {
            chunks.push(Chunk {
                text: &input[start..offset],
                line: start_line,
            });
            (start, start_line) = (offset, index + 1);
        }
        offset += line.len();
    }
    if offset > start {
        chunks.push(Chunk {
            text: &input[start..],
            line: start_line,
        });
    }
    chunks
}

fn is_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether a chunk holds more than markers, directives, comments and blank lines.
fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|line| {
        let line = line.trim();
        let rest = if is_marker(line) {
            line[3..].trim()
        } else {
            line
        };
        !(rest.is_empty() || rest.starts_with('#') || line.starts_with('%') || rest == "...")
    })
}

/// The lines at the head of a chunk kept when it is rewritten: its `---` line and the
/// comment and blank lines before the first content line.
fn head(chunk: &str) -> String {
    let mut head = String::new();
    for line in chunk.split_inclusive('\n') {
        let trimmed = line.trim();
        if is_marker(line) {
            // Content on the marker line itself is re-emitted below, so keep only `---`.
            let rest = trimmed[3..].trim();
            head.push_str(if rest.is_empty() || rest.starts_with('#') {
                line
            } else {
                "---\n"
            });
        } else if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('%') {
            head.push_str(line);
        } else {
            break;
        }
    }
    if !head.is_empty() && !head.ends_with('\n') {
        head.push('\n');
    }
    head
}

/// The context of one document.
struct Doc<'a> {
    document: usize,
    options: &'a InjectOptions,
}

impl Doc<'_> {
    /// Handles one object (and a `List`'s items), adding a report for each with a kind.
    fn object(
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
            self.pod_template(template, &namespace, &mut report)?
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
        if let Some(reason) = skip_reason(spec) {
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

    /// Puts the sidecar first in `initContainers`, or replaces the one already there.
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
            Some(index) => init[index] = sidecar,
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
        let ours = Value::String(Ipv4Addr::LOCALHOST.to_string());
        if let Some(Value::Sequence(servers)) = old.get("nameservers") {
            let dropped: Vec<&str> = servers
                .iter()
                .filter(|s| **s != ours)
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
        let mut options = match old.get("options") {
            Some(Value::Sequence(options)) => options.clone(),
            _ => Sequence::new(),
        };
        let ndots_at = options
            .iter()
            .position(|o| o.get("name").and_then(Value::as_str) == Some("ndots"));
        let ndots = |n: u8| {
            let mut option = Mapping::new();
            option.insert("name".into(), "ndots".into());
            option.insert("value".into(), Value::String(n.to_string()));
            Value::Mapping(option)
        };
        match (ndots_at, self.options.ndots) {
            (Some(at), Some(n)) => options[at] = ndots(n),
            (Some(_), None) => {}
            (None, n) => options.insert(0, ndots(n.unwrap_or(5))),
        }
        let mut config = Mapping::new();
        config.insert("nameservers".into(), Value::Sequence(vec![ours]));
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
fn skip_reason(spec: &Mapping) -> Option<SkipReason> {
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Some(SkipReason::HostNetwork);
    }
    let names = |key: &str| match spec.get(key) {
        Some(Value::Sequence(list)) => list.iter().filter_map(container_name).collect(),
        _ => Vec::new(),
    };
    if names("containers").contains(&CONTAINER_NAME) {
        return Some(SkipReason::NameTaken);
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

/// Whether an object (a workload, or a pod template) carries `dnscore.io/inject: disabled`.
fn opted_out(template: &Mapping) -> bool {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .and_then(Value::as_str)
        == Some("disabled")
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

/// The sidecar container as the injector writes it (see deploy/deployment.yaml).
fn sidecar_container(options: &InjectOptions) -> Mapping {
    let mut args = vec![format!("--listen={DNS_LISTEN}")];
    args.extend(options.upstreams.iter().map(|u| format!("--upstream={u}")));
    if let Some(name) = &options.discover {
        args.push(format!("--discover={name}"));
    }
    args.push(format!("--metrics-listen={}", options.metrics_listen));
    args.push(format!("--lameduck={}", duration_arg(options.lameduck)));
    if let Some(capacity) = options.cache_capacity {
        args.push(format!("--cache-capacity={capacity}"));
    }
    let port = i64::from(options.metrics_listen.port());
    let probe = |path: &str, period: i64, failures: i64| {
        yaml(&[
            (
                "httpGet",
                yaml(&[("path", path.into()), ("port", port.into())]),
            ),
            ("periodSeconds", period.into()),
            ("timeoutSeconds", 1.into()),
            ("failureThreshold", failures.into()),
        ])
    };
    let strings = |items: &[&str]| Value::Sequence(items.iter().map(|s| (*s).into()).collect());
    mapping(&[
        ("name", CONTAINER_NAME.into()),
        ("image", options.image.as_str().into()),
        ("imagePullPolicy", "IfNotPresent".into()),
        ("restartPolicy", "Always".into()),
        (
            "args",
            Value::Sequence(args.into_iter().map(Value::String).collect()),
        ),
        (
            "ports",
            Value::Sequence(vec![yaml(&[
                ("name", "dnscore-metrics".into()),
                ("containerPort", port.into()),
                ("protocol", "TCP".into()),
            ])]),
        ),
        // Holds back the containers after it until DNS answers.
        ("startupProbe", probe("/ready", 1, 30)),
        ("livenessProbe", probe("/health", 10, 3)),
        ("readinessProbe", probe("/ready", 5, 2)),
        (
            "resources",
            yaml(&[
                (
                    "requests",
                    yaml(&[
                        ("cpu", options.cpu_request.as_str().into()),
                        ("memory", options.memory_request.as_str().into()),
                    ]),
                ),
                (
                    "limits",
                    yaml(&[("memory", options.memory_limit.as_str().into())]),
                ),
            ]),
        ),
        (
            "securityContext",
            yaml(&[
                ("runAsNonRoot", true.into()),
                ("runAsUser", SIDECAR_UID.into()),
                ("runAsGroup", SIDECAR_UID.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                (
                    "capabilities",
                    yaml(&[
                        ("drop", strings(&["ALL"])),
                        ("add", strings(&["NET_BIND_SERVICE"])),
                    ]),
                ),
                ("seccompProfile", yaml(&[("type", "RuntimeDefault".into())])),
            ]),
        ),
    ])
}

/// A mapping from `(key, value)` pairs, in order.
fn mapping(pairs: &[(&str, Value)]) -> Mapping {
    pairs
        .iter()
        .map(|(k, v)| (Value::String((*k).to_owned()), v.clone()))
        .collect()
}

fn yaml(pairs: &[(&str, Value)]) -> Value {
    Value::Mapping(mapping(pairs))
}

/// A duration as `--lameduck` takes it: `5s`, `1500ms`.
fn duration_arg(duration: Duration) -> String {
    dnscore::settings::format_duration(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte_and_cuts_only_at_markers() {
        let input = "# head\na: 1\n---\nb: |\n  --- not a marker\n--- # c\nc: 3\n---x: no\n";
        let chunks = split_documents(input);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text).collect();
        assert_eq!(
            texts,
            [
                "# head\na: 1\n",
                "---\nb: |\n  --- not a marker\n",
                "--- # c\nc: 3\n---x: no\n"
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.line).collect::<Vec<_>>(), [1, 3, 6]);
        assert_eq!(texts.concat(), input);
    }

    #[test]
    fn head_keeps_marker_and_leading_comments() {
        assert_eq!(head("---\n# web\n\nkind: Pod\n# tail\n"), "---\n# web\n\n");
        assert_eq!(head("--- {kind: Pod}\n"), "---\n");
        assert!(!has_content("---\n# only a comment\n...\n"));
    }

    #[test]
    fn options_that_would_loop_or_break_probes_are_refused() {
        let loopback = InjectOptions {
            upstreams: vec!["127.0.0.1:53".parse().unwrap()],
            ..InjectOptions::default()
        };
        assert!(matches!(
            loopback.validate(),
            Err(InjectError::LoopbackUpstream(_))
        ));
        let none = InjectOptions {
            upstreams: Vec::new(),
            ..InjectOptions::default()
        };
        assert!(matches!(none.validate(), Err(InjectError::NoUpstream)));
        let probes = InjectOptions {
            metrics_listen: "127.0.0.1:9153".parse().unwrap(),
            ..InjectOptions::default()
        };
        assert!(matches!(
            probes.validate(),
            Err(InjectError::InvalidOption { .. })
        ));
        assert_eq!(duration_arg(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_arg(Duration::from_secs(30)), "30s");
    }
}
