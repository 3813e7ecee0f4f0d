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

mod container;
mod options;
pub(crate) mod pod;
mod report;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) use options::parse_seconds;
pub use options::{ANNOTATION_PREFIX, AnnotationError, InjectOptions, OPTION_ANNOTATIONS};
pub use report::{InjectReport, ObjectReport, Outcome, SkipReason};
pub use stream::inject;

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
    /// A pod annotation that overrides an option has a value that cannot be used: fix the
    /// annotation (the webhook admits such a pod without the sidecar, with a warning).
    #[error("document {document} ({kind} {name}): {source}")]
    Annotation {
        /// 1-based number of the document in the stream.
        document: usize,
        /// The object's kind.
        kind: String,
        /// The object's `metadata.name`, or `?`.
        name: String,
        /// What is wrong with the annotation.
        source: Box<AnnotationError>,
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
