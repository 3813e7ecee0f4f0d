//! The admission webhook's kustomize manifests (deploy/webhook): the base and each overlay are
//! rendered with `kubectl kustomize`, every rendered document must deserialize as its typed
//! Kubernetes object (k8s-openapi) *and* serialize back to the same tree, and the properties
//! the webhook relies on are checked on the typed objects. The self-managed overlay is
//! rendered from a copy, with a certificate made by the real `dnscore-sidecar cert`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_norway::Value;

mod common;
use common::{documents, kind, name, typed};

const NAMESPACE: &str = "dnscore-system";
const NAME: &str = "dnscore-webhook";
const TLS_SECRET: &str = "dnscore-webhook-tls";
const WEBHOOKS: [&str; 2] = ["namespace.inject.dnscore.io", "object.inject.dnscore.io"];
const SERVICE_DNS_NAMES: [&str; 2] = [
    "dnscore-webhook.dnscore-system.svc",
    "dnscore-webhook.dnscore-system.svc.cluster.local",
];

fn webhook_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/webhook")
}

/// Whether `kubectl` can be run; the tests say they are skipped when it cannot.
fn have_kubectl() -> bool {
    match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl version --client: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(err) if err.kind() == ErrorKind::NotFound => {
            eprintln!("skipped: kubectl not found");
            false
        }
        Err(err) => panic!("kubectl: {err}"),
    }
}

/// Runs `command` to its end, or kills it after a minute: a tool that hangs fails the test
/// instead of stalling the run.
fn run(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    // Read both pipes as the child writes: a full pipe would block it.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).unwrap();
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).unwrap();
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after 60 s, killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `kubectl kustomize DIR`, split into its documents.
fn render(dir: &Path) -> Vec<Value> {
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).unwrap())
}

fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| kind(d) == kind_ && name(d) == name_);
    let doc = found
        .next()
        .unwrap_or_else(|| panic!("no {kind_} {name_} rendered"));
    assert!(found.next().is_none(), "two {kind_} {name_} rendered");
    doc
}

/// A Secret with its `data` values on one line each. kustomize wraps the base64 of generated
/// data at 70 columns; the API server's decoder (Go's) skips line breaks, k8s-openapi's
/// rejects them.
fn unwrapped(secret: &Value) -> Value {
    let mut secret = secret.clone();
    if let Some(data) = secret.get_mut("data").and_then(Value::as_mapping_mut) {
        for (_, value) in data.iter_mut() {
            let text = value.as_str().unwrap().replace(['\r', '\n'], "");
            *value = Value::String(text);
        }
    }
    secret
}

/// The typed objects every overlay renders (the base has them all but the Secret).
struct Rendered {
    docs: Vec<Value>,
    deployment: Deployment,
    service: Service,
    webhooks: MutatingWebhookConfiguration,
    secret: Option<Secret>,
}

/// A label selector against a set of labels, as the API server evaluates it.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown operator {other}"),
        }
    });
    labels_match && expressions_match
}

/// The label the API server sets on every namespace.
fn ns(name: &str) -> (&str, &str) {
    ("kubernetes.io/metadata.name", name)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The webhooks a pod with `pod` labels, created in a namespace with `namespace` labels,
/// is sent to (by their selectors; every webhook here has both).
fn matching<'a>(
    webhooks: &'a [MutatingWebhook],
    namespace: &[(&str, &str)],
    pod: &[(&str, &str)],
) -> Vec<&'a str> {
    let (namespace, pod) = (labels(namespace), labels(pod));
    webhooks
        .iter()
        .filter(|w| {
            selects(w.namespace_selector.as_ref().unwrap(), &namespace)
                && selects(w.object_selector.as_ref().unwrap(), &pod)
        })
        .map(|w| w.name.as_str())
        .collect()
}

/// Renders `dir`, type-checks every document and asserts what the base guarantees.
fn render_and_check(dir: &Path) -> Rendered {
    let docs = render(dir);
    let mut namespaces = Vec::new();
    let mut accounts = Vec::new();
    let (mut services, mut secrets, mut deployments, mut pdbs, mut configs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for doc in &docs {
        // Every rendered document through its typed object; anything else fails.
        let api_version = doc["apiVersion"].as_str().unwrap();
        match (api_version, kind(doc)) {
            ("v1", "Namespace") => namespaces.push(typed::<Namespace>(doc)),
            ("v1", "ServiceAccount") => accounts.push(typed::<ServiceAccount>(doc)),
            ("v1", "Service") => services.push(typed::<Service>(doc)),
            ("v1", "Secret") => secrets.push(typed::<Secret>(&unwrapped(doc))),
            ("apps/v1", "Deployment") => deployments.push(typed::<Deployment>(doc)),
            ("policy/v1", "PodDisruptionBudget") => pdbs.push(typed::<PodDisruptionBudget>(doc)),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                configs.push(typed::<MutatingWebhookConfiguration>(doc));
            }
            // No k8s-openapi type: the cert-manager test checks their fields.
            ("cert-manager.io/v1", "Issuer" | "Certificate") => {}
            other => panic!("unexpected document {other:?}"),
        }
        // Every namespaced object is in the webhook's namespace; the cluster-scoped ones
        // have none.
        let namespace = doc["metadata"]["namespace"].as_str();
        match kind(doc) {
            "Namespace" | "MutatingWebhookConfiguration" => assert_eq!(namespace, None),
            other => assert_eq!(namespace, Some(NAMESPACE), "{other} {}", name(doc)),
        }
    }
    for (what, count) in [
        ("Namespace", namespaces.len()),
        ("ServiceAccount", accounts.len()),
        ("Service", services.len()),
        ("Deployment", deployments.len()),
        ("PodDisruptionBudget", pdbs.len()),
        ("MutatingWebhookConfiguration", configs.len()),
    ] {
        assert_eq!(count, 1, "one {what}");
    }
    assert!(secrets.len() <= 1);
    let namespace = namespaces.remove(0);
    assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
    let account = accounts.remove(0);
    assert_eq!(account.metadata.name.as_deref(), Some(NAME));
    assert_eq!(
        account.automount_service_account_token,
        Some(false),
        "the webhook calls no API: no token"
    );

    let deployment = deployments.remove(0);
    assert_eq!(deployment.metadata.name.as_deref(), Some(NAME));
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let template = &spec.template;
    let pod_labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert!(selects(&spec.selector, &pod_labels));
    assert_eq!(
        pod_labels.get("dnscore.io/inject").map(String::as_str),
        Some("disabled"),
        "the webhook's own pods are never injected"
    );
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    assert_ne!(
        pod.automount_service_account_token,
        Some(true),
        "no token, whatever the ServiceAccount says"
    );
    assert_eq!(pod.priority_class_name, None);
    let anti = pod
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .as_deref()
        .unwrap();
    assert!(
        preferred.iter().any(|w| {
            let term = &w.pod_affinity_term;
            term.topology_key == "kubernetes.io/hostname"
                && selects(term.label_selector.as_ref().unwrap(), &pod_labels)
        }),
        "the replicas prefer different nodes"
    );
    assert!(
        anti.required_during_scheduling_ignored_during_execution
            .is_none(),
        "a one-node cluster still runs both replicas"
    );
    let spread = pod.topology_spread_constraints.as_deref().unwrap();
    assert!(spread.iter().any(|c| {
        c.topology_key == "topology.kubernetes.io/zone"
            && c.when_unsatisfiable == "ScheduleAnyway"
            && selects(c.label_selector.as_ref().unwrap(), &pod_labels)
    }));
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(65_532));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    assert_eq!(pod.containers.len(), 1);
    assert!(pod.init_containers.is_none());
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/dnscore/dnscore-sidecar:0.1.0")
    );
    let args = container.args.as_deref().unwrap();
    assert_eq!(args[0], "webhook", "the binary is the entrypoint");
    for arg in [
        "--listen=0.0.0.0:8443",
        "--tls-cert=/etc/dnscore-webhook/tls/tls.crt",
        "--tls-key=/etc/dnscore-webhook/tls/tls.key",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} missing from {args:?}");
    }
    assert!(args.iter().any(|a| a.starts_with("--upstream=")));
    let ports = container.ports.as_deref().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p.container_port == 8443 && p.name.as_deref() == Some("https"))
    );
    for (probe, path) in [
        (&container.liveness_probe, "/health"),
        (&container.readiness_probe, "/ready"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(8443));
    }
    let resources = container.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "50m");
    assert_eq!(requests["memory"].0, "32Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "128Mi");
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(caps.add.is_none());
    let mount = container
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/etc/dnscore-webhook/tls")
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        mount.sub_path, None,
        "a subPath mount never sees a renewed certificate"
    );
    let volume = pod
        .volumes
        .as_deref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some(TLS_SECRET)
    );

    let pdb = pdbs.remove(0);
    assert_eq!(pdb.metadata.name.as_deref(), Some(NAME));
    let pdb_spec = pdb.spec.unwrap();
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)));
    assert!(selects(pdb_spec.selector.as_ref().unwrap(), &pod_labels));

    let service = services.remove(0);
    assert_eq!(service.metadata.name.as_deref(), Some(NAME));
    let service_spec = service.spec.as_ref().unwrap();
    let selector = service_spec.selector.as_ref().unwrap();
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the Service selects the webhook's pods"
    );
    let port = &service_spec.ports.as_deref().unwrap()[0];
    assert_eq!(port.port, 443);
    assert_eq!(port.name.as_deref(), Some("https"));
    assert_eq!(port.target_port, Some(IntOrString::Int(8443)));

    let webhooks = configs.remove(0);
    assert_eq!(webhooks.metadata.name.as_deref(), Some(NAME));
    let hooks = webhooks.webhooks.as_deref().unwrap();
    let names: Vec<&str> = hooks.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, WEBHOOKS, "two webhooks, in this order");
    for hook in hooks {
        let what = &hook.name;
        assert_eq!(hook.admission_review_versions, ["v1"], "{what}");
        assert_eq!(hook.side_effects, "None", "{what}");
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"), "{what}");
        assert!(
            hook.timeout_seconds.is_some_and(|t| (1..=10).contains(&t)),
            "{what}: {:?}",
            hook.timeout_seconds
        );
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(hook.match_policy.as_deref(), Some("Equivalent"));
        let rules = hook.rules.as_deref().unwrap();
        assert_eq!(rules.len(), 1, "{what}");
        let rule = &rules[0];
        assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_owned()][..]));
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(rule.api_versions.as_deref(), Some(&["v1".to_owned()][..]));
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
        assert_eq!(rule.scope.as_deref(), Some("Namespaced"));
        let conditions = hook.match_conditions.as_deref().unwrap();
        assert_eq!(conditions.len(), 2, "{what}");
        assert_eq!(conditions[0].name, "not-host-network");
        assert_eq!(
            conditions[0].expression,
            "!has(object.spec.hostNetwork) || !object.spec.hostNetwork"
        );
        assert_eq!(conditions[1].name, "not-windows");
        assert_eq!(
            conditions[1].expression,
            "!has(object.spec.os) || object.spec.os.name != 'windows'"
        );
        assert_eq!(hook.client_config.url, None);
        let target = hook.client_config.service.as_ref().unwrap();
        assert_eq!(
            (target.name.as_str(), target.namespace.as_str()),
            (
                service.metadata.name.as_deref().unwrap(),
                service.metadata.namespace.as_deref().unwrap()
            ),
            "{what} calls the rendered Service"
        );
        assert_eq!(target.path.as_deref(), Some("/mutate"));
        assert_eq!(target.port, Some(port.port));
    }

    // Who is sent to which webhook: a pod goes to one at most, never to both.
    let enabled = ("dnscore.io/inject", "enabled");
    let disabled = ("dnscore.io/inject", "disabled");
    for (namespace, pod, wanted) in [
        // A namespace labelled enabled: its pods, but those that opt out.
        (&[ns("shop"), enabled][..], &[][..], &[WEBHOOKS[0]][..]),
        (&[ns("shop"), enabled], &[("app", "web")], &[WEBHOOKS[0]]),
        (&[ns("shop"), enabled], &[enabled], &[WEBHOOKS[0]]),
        (&[ns("shop"), enabled], &[disabled], &[]),
        // An unlabelled namespace: only the pods labelled enabled.
        (&[ns("blog")], &[enabled], &[WEBHOOKS[1]]),
        (&[ns("blog")], &[("app", "web")], &[]),
        (&[ns("blog")], &[disabled], &[]),
        // A namespace labelled disabled: none, whatever the pod says.
        (&[ns("legacy"), disabled], &[enabled], &[]),
        (&[ns("legacy"), disabled], &[], &[]),
        // kube-system and the webhook's own namespace: none, whatever the labels.
        (&[ns("kube-system"), enabled], &[], &[]),
        (&[ns("kube-system")], &[enabled], &[]),
        (&[ns(NAMESPACE), enabled], &[], &[]),
        (&[ns(NAMESPACE)], &[enabled], &[]),
    ] {
        assert_eq!(
            matching(hooks, namespace, pod),
            wanted,
            "namespace {namespace:?}, pod {pod:?}"
        );
    }
    // The webhook's own pods, even in a namespace labelled enabled.
    let own: Vec<(&str, &str)> = pod_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(matching(hooks, &[ns("elsewhere"), enabled], &own).is_empty());
    let namespace_labels = namespace.metadata.labels.clone().unwrap_or_default();
    let own_namespace: Vec<(&str, &str)> = namespace_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([ns(NAMESPACE)])
        .collect();
    assert!(matching(hooks, &own_namespace, &[enabled]).is_empty());

    Rendered {
        docs,
        deployment,
        service,
        webhooks,
        secret: secrets.pop(),
    }
}

fn ca_bundles(webhooks: &MutatingWebhookConfiguration) -> Vec<Option<&ByteString>> {
    webhooks
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.as_ref())
        .collect()
}

fn annotation<'a>(webhooks: &'a MutatingWebhookConfiguration, key: &str) -> Option<&'a str> {
    let annotations = webhooks.metadata.annotations.as_ref()?;
    annotations.get(key).map(String::as_str)
}

#[test]
fn the_base_renders_as_typed_objects_without_a_certificate() {
    if !have_kubectl() {
        return;
    }
    let base = render_and_check(&webhook_dir().join("base"));
    assert!(base.secret.is_none(), "the overlays bring the Secret");
    assert_eq!(ca_bundles(&base.webhooks), [None, None]);
    assert_eq!(
        annotation(&base.webhooks, "cert-manager.io/inject-ca-from"),
        None
    );
    assert_eq!(base.docs.len(), 6);
}

#[test]
fn the_cert_manager_overlay_issues_the_serving_certificate_and_injects_its_ca() {
    if !have_kubectl() {
        return;
    }
    let rendered = render_and_check(&webhook_dir().join("overlays/cert-manager"));
    let docs = &rendered.docs;
    assert!(rendered.secret.is_none(), "cert-manager writes the Secret");
    // The CA injector fills every caBundle; the manifests leave them out.
    assert_eq!(ca_bundles(&rendered.webhooks), [None, None]);
    assert_eq!(
        annotation(&rendered.webhooks, "cert-manager.io/inject-ca-from"),
        Some("dnscore-system/dnscore-webhook")
    );

    // The Certificate the annotation names, for the Service's names, into the mounted Secret.
    let certificate = find(docs, "Certificate", NAME);
    assert_eq!(
        certificate["apiVersion"].as_str(),
        Some("cert-manager.io/v1")
    );
    let spec = &certificate["spec"];
    assert_eq!(spec["secretName"].as_str(), Some(TLS_SECRET));
    let dns_names: Vec<&str> = spec["dnsNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let service = &rendered.service.metadata;
    let service_name = format!(
        "{}.{}.svc",
        service.name.as_deref().unwrap(),
        service.namespace.as_deref().unwrap()
    );
    assert!(dns_names.contains(&service_name.as_str()), "{dns_names:?}");
    for wanted in SERVICE_DNS_NAMES {
        assert!(dns_names.contains(&wanted), "{wanted} not in {dns_names:?}");
    }
    assert_ne!(spec["isCA"].as_bool(), Some(true));
    let deployment_secret = rendered
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_deref()
        .unwrap()
        .iter()
        .find_map(|v| v.secret.as_ref()?.secret_name.as_deref());
    assert_eq!(deployment_secret, spec["secretName"].as_str());

    // Its issuer chain, every link rendered: a CA Issuer whose CA is a Certificate issued by
    // a SelfSigned Issuer.
    let issuer_of = |certificate: &Value| {
        let reference = &certificate["spec"]["issuerRef"];
        assert_eq!(reference["kind"].as_str(), Some("Issuer"));
        assert!(
            reference["group"].is_null() || reference["group"].as_str() == Some("cert-manager.io"),
            "{reference:?}"
        );
        let issuer = find(docs, "Issuer", reference["name"].as_str().unwrap());
        assert_eq!(issuer["apiVersion"].as_str(), Some("cert-manager.io/v1"));
        issuer
    };
    let ca_issuer = issuer_of(certificate);
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    let ca = docs
        .iter()
        .find(|d| kind(d) == "Certificate" && d["spec"]["secretName"].as_str() == Some(ca_secret))
        .unwrap();
    assert_eq!(ca["spec"]["isCA"].as_bool(), Some(true));
    // Renewed with the same key: certificates it signed before still verify.
    assert_eq!(
        ca["spec"]["privateKey"]["rotationPolicy"].as_str(),
        Some("Never")
    );
    let root = issuer_of(ca);
    assert!(root["spec"]["selfSigned"].is_mapping());
    let cert_manager = docs
        .iter()
        .filter(|d| d["apiVersion"].as_str() == Some("cert-manager.io/v1"))
        .count();
    assert_eq!(cert_manager, 4, "two Issuers, two Certificates");
}

/// A copy of deploy/webhook in a directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies `from` to `to`, leaving out any certificate made in a `certs` directory of the
/// work tree (only its .gitignore is part of the project).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if from.file_name().is_none_or(|d| d != "certs") || entry.file_name() == ".gitignore"
        {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_self_managed_overlay_serves_the_certificate_of_dnscore_sidecar_cert() {
    if !have_kubectl() {
        return;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "dnscore-webhook-manifests-{}-{nanos}",
        std::process::id()
    )));
    copy_tree(&webhook_dir(), &scratch.0);
    let overlay = scratch.0.join("overlays/self-managed");
    let certs = overlay.join("certs");
    assert!(certs.join(".gitignore").is_file());
    assert!(
        !certs.join("tls.key").exists(),
        "the copy starts without a certificate"
    );

    let out = run(Command::new(env!("CARGO_BIN_EXE_dnscore-sidecar"))
        .args(["cert", "--service", NAME, "--namespace", NAMESPACE, "--out"])
        .arg(&certs));
    assert!(
        out.status.success(),
        "dnscore-sidecar cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |file: &str| fs::read(certs.join(file)).unwrap();
    let (ca, tls_crt, tls_key) = (read("ca.crt"), read("tls.crt"), read("tls.key"));
    assert!(certs.join("ca-bundle-patch.yaml").is_file());
    assert_ne!(ca, tls_crt, "a CA and a serving certificate it signed");

    let rendered = render_and_check(&overlay);
    // Both webhooks trust the CA that signed the served certificate (the typed object has
    // decoded the base64; the round trip checked it encodes back the same).
    let wanted = ByteString(ca);
    assert_eq!(
        ca_bundles(&rendered.webhooks),
        [Some(&wanted), Some(&wanted)]
    );
    assert_eq!(
        annotation(&rendered.webhooks, "cert-manager.io/inject-ca-from"),
        None
    );

    let secret = rendered.secret.unwrap();
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some(TLS_SECRET),
        "no hash suffix"
    );
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["tls.crt", "tls.key"]);
    assert_eq!(data["tls.crt"], ByteString(tls_crt));
    assert_eq!(data["tls.key"], ByteString(tls_key));
    // What the certificate is for is `cert`'s business; that the Deployment mounts this very
    // Secret (by the name kustomize gave it) is the overlay's.
    let volumes = rendered
        .deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                == secret.metadata.name.as_deref())
    );
    assert_eq!(rendered.docs.len(), 7);
}
