//! What `inject` says of each object it read.

/// What [`inject`](super::inject) produced.
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
    /// An app container (not an init container) is already named [`CONTAINER_NAME`](super::CONTAINER_NAME).
    NameTaken,
    /// The annotation [`INJECT_ANNOTATION`](super::INJECT_ANNOTATION)`: disabled`.
    OptedOut,
    /// A Windows pod (`spec.os.name` or the `kubernetes.io/os` node selector): the sidecar
    /// is a Linux image, and pod sysctls are refused for Windows pods.
    Windows,
    /// A container of the pod already declares this port, which the sidecar's metrics and
    /// probes would need (set another with `dnscore.io/metrics-listen`).
    PortTaken(u16),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HostNetwork => "hostNetwork pod (127.0.0.1:53 would be the node's)",
            Self::NodeDns => "dnsPolicy Default (the pod uses the node's resolvers)",
            Self::CustomNameservers => "dnsPolicy None with its own nameservers",
            Self::NameTaken => "an app container is already named dnscore",
            Self::OptedOut => "annotation dnscore.io/inject: disabled",
            Self::Windows => "a Windows pod (the sidecar is a Linux image)",
            Self::PortTaken(port) => {
                return write!(
                    f,
                    "a container already uses port {port}, the sidecar's metrics port \
                     (set dnscore.io/metrics-listen to another)"
                );
            }
        })
    }
}
