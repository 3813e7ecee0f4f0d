//! The sidecar container as the injector writes it.

use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::{CONTAINER_NAME, DNS_LISTEN, InjectOptions, SIDECAR_UID};

/// The sidecar container as the injector writes it (see deploy/deployment.yaml).
pub(super) fn sidecar_container(options: &InjectOptions) -> Mapping {
    let mut args = vec![format!("--listen={DNS_LISTEN}")];
    args.extend(options.upstreams.iter().map(|u| format!("--upstream={u}")));
    if let Some(name) = &options.discover {
        args.push(format!("--discover={name}"));
    }
    args.push(format!("--metrics-listen={}", options.metrics_listen));
    args.push(format!("--lameduck={}", duration_arg(options.lameduck)));
    // The sidecar's TTL floor for the cluster's names (`cluster-min-ttl`) follows the
    // cluster domain.
    let domain = options.cluster_domain.trim_end_matches('.');
    if !domain.eq_ignore_ascii_case(dnscore::defaults::CLUSTER_DOMAIN) {
        args.push(format!("--cluster-domain={domain}"));
    }
    if let Some(capacity) = options.cache_capacity {
        args.push(format!("--cache-capacity={capacity}"));
    }
    if let Some(seconds) = options.cluster_min_ttl {
        args.push(format!("--cluster-min-ttl={seconds}"));
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
    fn durations_are_written_as_the_sidecar_reads_them() {
        assert_eq!(duration_arg(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_arg(Duration::from_secs(30)), "30s");
    }
}
