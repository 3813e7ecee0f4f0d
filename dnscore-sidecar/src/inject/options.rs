//! What `inject` and the webhook are told: [`InjectOptions`], from flags, and per pod from
//! its annotations.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::{DEFAULT_IMAGE, InjectError, MAX_NDOTS};

/// The prefix of the per-pod annotations that override options (see
/// [`InjectOptions::with_annotations`]).
pub const ANNOTATION_PREFIX: &str = "dnscore.io/";
/// The options a pod's annotations may set, `dnscore.io/<name>`.
pub const OPTION_ANNOTATIONS: [&str; 9] = [
    "upstream",
    "discover",
    "cache-capacity",
    "cluster-min-ttl",
    "ndots",
    "lameduck",
    "image",
    "metrics-listen",
    "fallback-nameserver",
];

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
    /// The sidecar's TTL floor for the cluster's names, in seconds (`--cluster-min-ttl`; 0 for
    /// none, e.g. for a workload that follows a headless Service whose pods change often).
    /// Default: none, the sidecar's default (30 s).
    pub cluster_min_ttl: Option<u32>,
    /// The sidecar's CPU request. Default: `25m`.
    pub cpu_request: String,
    /// The sidecar's memory request. Default: `32Mi`.
    pub memory_request: String,
    /// The sidecar's memory limit. Default: `64Mi`.
    pub memory_limit: String,
    /// A nameserver written after `127.0.0.1` in the pod's resolv.conf (the cluster DNS
    /// Service IP), with `options timeout:1 attempts:2`, so that a pod whose sidecar is
    /// restarting still resolves: glibc moves to the next nameserver at once when loopback
    /// refuses. Default: none, because musl (Alpine images) asks every nameserver at once,
    /// which would send every query to the cluster DNS as well and bring back the conntrack
    /// entries the sidecar exists to save.
    pub fallback_nameserver: Option<IpAddr>,
    /// Whether to set the pod sysctl [`UNPRIVILEGED_PORT_SYSCTL`](super::UNPRIVILEGED_PORT_SYSCTL) to 53. A non-root
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
            cluster_domain: dnscore::defaults::CLUSTER_DOMAIN.to_owned(),
            ndots: None,
            lameduck: crate::config::DEFAULT_LAMEDUCK,
            metrics_listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                crate::config::METRICS_PORT,
            ),
            cache_capacity: None,
            cluster_min_ttl: None,
            cpu_request: "25m".to_owned(),
            memory_request: "32Mi".to_owned(),
            memory_limit: "64Mi".to_owned(),
            fallback_nameserver: None,
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
        if let Some(name) = &self.discover
            && !is_dns_name(name)
        {
            return invalid(
                "discover",
                "must be a Service's DNS name (letters, digits, '-' and '.')",
            );
        }
        if let Some(ip) = self.fallback_nameserver
            && (ip.is_loopback() || ip.is_unspecified())
        {
            return invalid(
                "fallback_nameserver",
                "must be the cluster DNS Service, not a loopback or unspecified address",
            );
        }
        if self.ndots.is_some_and(|n| n > MAX_NDOTS) {
            return invalid("ndots", "resolv.conf caps ndots at 15");
        }
        for (option, value) in [("image", &self.image), ("namespace", &self.namespace)] {
            if value.trim().is_empty() {
                return invalid(option, "must not be empty");
            }
        }
        // The sidecar's own reading of it (its `--cluster-domain`).
        if let Err(e) =
            dnscore::ResolverBuilder::default().set("cluster-domain", &self.cluster_domain)
        {
            return invalid("cluster_domain", &e.to_string());
        }
        Ok(())
    }

    /// These options with a pod's annotations applied: `dnscore.io/upstream` (`IP[:PORT]`,
    /// comma-separated; replaces the upstreams), `dnscore.io/discover` (a Service name, or
    /// empty for none), `dnscore.io/cache-capacity`, `dnscore.io/cluster-min-ttl` (whole
    /// seconds, `0` for none), `dnscore.io/ndots`,
    /// `dnscore.io/lameduck` (`5s`, `1500ms`, at most the sidecar's maximum),
    /// `dnscore.io/image`, `dnscore.io/metrics-listen` (`IP:PORT`) and
    /// `dnscore.io/fallback-nameserver` (an IP, or `none`). Other annotations are ignored, but an unknown one under
    /// `dnscore.io/` comes back in the second value, for a note (a misspelt knob should
    /// not go unnoticed). The result is checked with [`validate`](Self::validate).
    pub fn with_annotations<'a>(
        &self,
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(Self, Vec<String>), AnnotationError> {
        let mut options = self.clone();
        let (mut unknown, mut applied) = (Vec::new(), Vec::new());
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            if OPTION_ANNOTATIONS.contains(&name) {
                applied.push(format!("{key}={value}"));
            }
            let bad = |reason: &str| AnnotationError {
                annotation: key.to_owned(),
                value: value.to_owned(),
                reason: reason.to_owned(),
            };
            let value = value.trim();
            match name {
                "upstream" => {
                    options.upstreams = value
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(|u| {
                            u.parse::<SocketAddr>()
                                .or_else(|_| u.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        })
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad("expected IP[:PORT], comma-separated"))?;
                }
                "discover" => {
                    options.discover = (!value.is_empty()).then(|| value.to_owned());
                }
                "cache-capacity" => {
                    options.cache_capacity = Some(
                        dnscore::settings::parse_count(value)
                            .ok_or_else(|| bad("expected a count of answers"))?,
                    );
                }
                "cluster-min-ttl" => {
                    options.cluster_min_ttl = Some(
                        parse_seconds(value)
                            .ok_or_else(|| bad("expected whole seconds such as 30 or 30s"))?,
                    );
                }
                "ndots" => {
                    options.ndots = Some(value.parse().map_err(|_| bad("expected a number 0-15"))?);
                }
                "lameduck" => {
                    let lameduck = dnscore::settings::parse_duration(value)
                        .ok_or_else(|| bad("expected a duration such as 5s"))?;
                    options.lameduck = lameduck.min(crate::config::MAX_LAMEDUCK);
                }
                "image" => options.image = value.to_owned(),
                "metrics-listen" => {
                    options.metrics_listen = value
                        .parse()
                        .map_err(|_| bad("expected IP:PORT, e.g. 0.0.0.0:9154"))?;
                }
                "fallback-nameserver" => {
                    options.fallback_nameserver = match value {
                        "" | "none" => None,
                        ip => Some(ip.parse().map_err(|_| bad("expected an IP, or none"))?),
                    };
                }
                // The injector's own markers.
                "inject" | "injected" => {}
                _ => unknown.push(key.to_owned()),
            }
        }
        // Each value parsed; together they may still make a broken pod (no upstream left).
        options.validate().map_err(|err| AnnotationError {
            annotation: "dnscore.io/".to_owned(),
            value: applied.join(" "),
            reason: err.to_string(),
        })?;
        Ok((options, unknown))
    }
}

/// Whole seconds, as the sidecar reads `--cluster-min-ttl` (`30`, `30s`, `1m`).
pub(crate) fn parse_seconds(text: &str) -> Option<u32> {
    let d = dnscore::settings::parse_duration(text)?;
    (d.subsec_nanos() == 0)
        .then(|| u32::try_from(d.as_secs()).ok())
        .flatten()
}

/// Whether `name` is a DNS name a Service can have (`coredns`, `kube-dns.kube-system.svc`).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A pod annotation that cannot be applied (see [`InjectOptions::with_annotations`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?}: {reason}")]
pub struct AnnotationError {
    /// The annotation's key.
    pub annotation: String,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let fallback = InjectOptions {
            fallback_nameserver: Some("127.0.0.1".parse().unwrap()),
            ..InjectOptions::default()
        };
        assert!(matches!(
            fallback.validate(),
            Err(InjectError::InvalidOption {
                option: "fallback_nameserver",
                ..
            })
        ));
    }

    #[test]
    fn annotations_override_options_or_say_what_is_wrong() {
        let defaults = InjectOptions::default();
        let (options, unknown) = defaults
            .with_annotations([
                ("dnscore.io/upstream", "10.96.0.10, 10.0.0.2:5353"),
                ("dnscore.io/cache-capacity", "500"),
                ("dnscore.io/cluster-min-ttl", "0"),
                ("dnscore.io/ndots", "2"),
                ("dnscore.io/lameduck", "1500ms"),
                ("dnscore.io/image", "registry.local/dnscore:1"),
                ("dnscore.io/discover", "coredns-headless"),
                ("dnscore.io/ndot", "1"),
                ("dnscore.io/injected", "true"),
                ("app.kubernetes.io/name", "web"),
            ])
            .unwrap();
        assert_eq!(
            options.upstreams,
            [
                "10.96.0.10:53".parse().unwrap(),
                "10.0.0.2:5353".parse().unwrap()
            ]
        );
        assert_eq!(options.cache_capacity, Some(500));
        assert_eq!(options.cluster_min_ttl, Some(0));
        assert_eq!(options.ndots, Some(2));
        assert_eq!(options.lameduck, Duration::from_millis(1500));
        assert_eq!(options.image, "registry.local/dnscore:1");
        assert_eq!(options.discover.as_deref(), Some("coredns-headless"));
        assert_eq!(unknown, ["dnscore.io/ndot"]);

        for (key, value) in [
            ("dnscore.io/upstream", "kube-dns"),
            ("dnscore.io/upstream", "127.0.0.1"),
            ("dnscore.io/ndots", "16"),
            ("dnscore.io/ndots", "-1"),
            ("dnscore.io/lameduck", "soon"),
            ("dnscore.io/cache-capacity", "lots"),
            ("dnscore.io/cluster-min-ttl", "1.5s"),
            ("dnscore.io/cluster-min-ttl", "-5"),
            ("dnscore.io/image", " "),
            ("dnscore.io/discover", "coredns pods"),
            ("dnscore.io/metrics-listen", "9154"),
            ("dnscore.io/metrics-listen", "127.0.0.1:9154"),
            ("dnscore.io/fallback-nameserver", "kube-dns"),
        ] {
            let err = defaults.with_annotations([(key, value)]).unwrap_err();
            assert!(!err.reason.is_empty(), "{key}: {value}");
        }
        // No upstream at all is refused too, unless a Service is discovered instead.
        assert!(
            defaults
                .with_annotations([("dnscore.io/upstream", "")])
                .is_err()
        );
        assert!(
            defaults
                .with_annotations([
                    ("dnscore.io/upstream", ""),
                    ("dnscore.io/discover", "coredns")
                ])
                .is_ok()
        );
    }
}
