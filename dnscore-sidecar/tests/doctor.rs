//! `doctor` on fixtures built from the real manifests (tests/fixtures/doctor, see its
//! README): each raises its finding, the healthy cluster raises no warning; the binary's
//! exit status, formats and errors; and the live mode against an HTTPS server in the test
//! that serves API list responses made from the same objects, which must give the same
//! findings as the file mode.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine;
use dnscore_sidecar::doctor::{self, Finding, Objects, Severity};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_dnscore-sidecar");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/doctor")
        .join(name)
}

fn objects(files: &[&str]) -> Objects {
    let mut objects = Objects::default();
    for file in files {
        let text = std::fs::read_to_string(fixture(file)).unwrap();
        objects.add_yaml(file, &text).unwrap();
    }
    objects
}

fn findings(files: &[&str]) -> Vec<Finding> {
    doctor::check(&objects(files), &[], &mut Vec::new())
}

/// (check, object) of every finding.
fn names(findings: &[Finding]) -> BTreeSet<(String, String)> {
    findings
        .iter()
        .map(|f| (f.check.to_owned(), format!("{}/{}", f.namespace, f.name)))
        .collect()
}

fn has(findings: &[Finding], check: &str, object: &str, severity: Severity) {
    let found = findings
        .iter()
        .find(|f| f.check == check && format!("{}/{}", f.namespace, f.name) == object);
    let found = found.unwrap_or_else(|| panic!("no {check} on {object} in {:?}", names(findings)));
    assert_eq!(found.severity, severity, "{found:?}");
    assert!(!found.problem.is_empty() && !found.why.is_empty() && !found.fix.is_empty());
}

fn lacks(findings: &[Finding], check: &str) {
    assert!(
        findings.iter().all(|f| f.check != check),
        "unexpected {check}: {:?}",
        names(findings)
    );
}

#[test]
fn the_eks_coredns_add_on_as_installed_raises_its_findings() {
    let found = findings(&["eks-coredns.yaml", "nodes.yaml"]);
    has(
        &found,
        "coredns-replicas",
        "kube-system/coredns",
        Severity::Warning,
    );
    has(
        &found,
        "coredns-autoscaling",
        "kube-system/coredns",
        Severity::Warning,
    );
    has(
        &found,
        "coredns-pdb",
        "kube-system/coredns",
        Severity::Warning,
    );
    has(
        &found,
        "coredns-lameduck",
        "kube-system/coredns",
        Severity::Warning,
    );
    has(
        &found,
        "coredns-spot",
        "kube-system/coredns",
        Severity::Warning,
    );
    // Its preferred anti-affinity, its 30 s grace period and its ready plugin are fine.
    lacks(&found, "coredns-spread");
    lacks(&found, "coredns-grace-period");
    lacks(&found, "coredns-ready");
    // The add-on's PDB covers it; without spot nodes (or Karpenter) nothing says spot.
    let found = findings(&["eks-coredns.yaml", "eks-coredns-pdb.yaml"]);
    lacks(&found, "coredns-pdb");
    lacks(&found, "coredns-spot");
}

#[test]
fn older_and_half_fixed_corefiles() {
    let legacy = findings(&["eks-coredns-legacy.yaml"]);
    has(
        &legacy,
        "coredns-ready",
        "kube-system/coredns",
        Severity::Warning,
    );
    has(
        &legacy,
        "coredns-lameduck",
        "kube-system/coredns",
        Severity::Warning,
    );
    let lameduck_30s = findings(&["eks-coredns-lameduck-30s.yaml"]);
    lacks(&lameduck_30s, "coredns-lameduck");
    has(
        &lameduck_30s,
        "coredns-grace-period",
        "kube-system/coredns",
        Severity::Warning,
    );
}

#[test]
fn nodelocal_dnscache_force_tcp_and_security_groups_for_pods() {
    // Toward CoreDNS, as the upstream manifest has it: worth knowing, not a warning.
    let found = findings(&["nodelocaldns.yaml"]);
    has(
        &found,
        "forward-force-tcp",
        "kube-system/node-local-dns",
        Severity::Info,
    );
    assert_eq!(
        found
            .iter()
            .filter(|f| f.check == "forward-force-tcp")
            .count(),
        3,
        "one per forward block with force_tcp (cluster.local, in-addr.arpa, ip6.arpa)"
    );
    lacks(&found, "nodelocal-sgp-strict");
    let found = findings(&["nodelocaldns.yaml", "aws-node-strict.yaml"]);
    has(
        &found,
        "nodelocal-sgp-strict",
        "kube-system/node-local-dns",
        Severity::Critical,
    );
    // Security groups for pods without NodeLocal DNSCache: nothing to say.
    lacks(&findings(&["aws-node-strict.yaml"]), "nodelocal-sgp-strict");
}

#[test]
fn conntrack_against_the_pods_a_node_takes() {
    let found = findings(&["kube-proxy-config.yaml", "nodes.yaml"]);
    // 131,072 entries for 110 pods (prefix delegation) is 1,191 a pod; for 29 pods, 4,519.
    has(
        &found,
        "conntrack-capacity",
        "/ip-10-0-43-21.us-west-2.compute.internal",
        Severity::Warning,
    );
    assert_eq!(
        found
            .iter()
            .filter(|f| f.check == "conntrack-capacity")
            .count(),
        1,
        "{:?}",
        names(&found)
    );
}

#[test]
fn karpenter_without_its_interruption_queue() {
    has(
        &findings(&["karpenter.yaml"]),
        "karpenter-interruption-queue",
        "kube-system/karpenter",
        Severity::Warning,
    );
    lacks(
        &findings(&["karpenter-with-queue.yaml"]),
        "karpenter-interruption-queue",
    );
    // Karpenter alone makes nothing keep CoreDNS off spot a warning.
    has(
        &findings(&["eks-coredns.yaml", "karpenter-with-queue.yaml"]),
        "coredns-spot",
        "kube-system/coredns",
        Severity::Warning,
    );
}

#[test]
fn workloads_with_ndots_5_and_a_sidecar_killed_mid_lameduck() {
    let found = findings(&["workloads.yaml"]);
    has(&found, "ndots-default", "shop/api", Severity::Info);
    has(
        &found,
        "dnscore-grace-period",
        "shop/web",
        Severity::Warning,
    );
    // The injected one is not told about ndots: its sidecar caches.
    assert!(!names(&found).contains(&("ndots-default".into(), "shop/web".into())));
}

#[test]
fn the_cluster_the_outage_reports_asked_for_raises_no_warning() {
    let found = findings(&["healthy-cluster.yaml"]);
    assert!(
        found.iter().all(|f| f.severity < Severity::Warning),
        "{:?}",
        names(&found)
    );
    assert_eq!(doctor::exit_status(&found), 0);
}

fn findings_of(yaml: &str) -> Vec<Finding> {
    let mut objects = Objects::default();
    objects.add_yaml("inline", yaml).unwrap();
    doctor::check(&objects, &[], &mut Vec::new())
}

const COREDNS: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: coredns, namespace: kube-system}\nspec: {replicas: 3, selector: {matchLabels: {k8s-app: kube-dns}}, template: {metadata: {labels: {k8s-app: kube-dns}}, spec: {containers: [{name: coredns, image: coredns}], AFFINITY}}}\n";

fn coredns_with(affinity: &str) -> String {
    let spot_node = "---\nkind: Node\nmetadata: {name: s1, labels: {karpenter.sh/capacity-type: spot}}\n---\n\
                     kind: Node\nmetadata: {name: s2, labels: {eks.amazonaws.com/capacityType: SPOT}}\n";
    COREDNS.replace("AFFINITY", affinity) + spot_node
}

#[test]
fn spot_placement_through_selectors_and_affinities() {
    let spot = |affinity: &str| {
        findings_of(&coredns_with(affinity))
            .into_iter()
            .find(|f| f.check == "coredns-spot")
            .map(|f| f.severity)
    };
    assert_eq!(
        spot("nodeSelector: {karpenter.sh/capacity-type: spot}"),
        Some(Severity::Critical)
    );
    let required = |expr: &str| {
        format!(
            "affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{expr}]}}]}}}}}}"
        )
    };
    assert_eq!(
        spot(&required(
            "{key: karpenter.sh/capacity-type, operator: In, values: [spot]}"
        )),
        Some(Severity::Critical)
    );
    assert_eq!(
        spot(&required(
            "{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}"
        )),
        None
    );
    // NotIn on Karpenter's label still admits the EKS spot node, which lacks it.
    assert_eq!(
        spot(&required(
            "{key: karpenter.sh/capacity-type, operator: NotIn, values: [spot]}"
        )),
        Some(Severity::Warning)
    );
    assert_eq!(
        spot("nodeSelector: {eks.amazonaws.com/capacityType: ON_DEMAND}"),
        None
    );
    assert_eq!(
        spot(
            "affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, preference: {matchExpressions: [{key: karpenter.sh/capacity-type, operator: In, values: [spot]}]}}]}}"
        ),
        Some(Severity::Warning)
    );
    // Running there now, seen from its pods.
    let on_spot = coredns_with("nodeSelector: {}")
        + "---\nkind: Pod\nmetadata: {name: coredns-1, namespace: kube-system, labels: {k8s-app: kube-dns}}\nspec: {nodeName: s1, containers: []}\n";
    let found = findings_of(&on_spot);
    has(
        &found,
        "coredns-spot",
        "kube-system/coredns",
        Severity::Critical,
    );
}

#[test]
fn workloads_injected_by_the_webhook_are_known_by_their_labels() {
    let yaml = "kind: Namespace\nmetadata: {name: shop, labels: {dnscore.io/inject: enabled}}\n---\n\
                apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: shop}\n\
                spec: {template: {metadata: {annotations: {dnscore.io/lameduck: 20s}}, spec: {terminationGracePeriodSeconds: 10, containers: [{name: a, image: a}]}}}\n---\n\
                apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: other}\n\
                spec: {template: {metadata: {labels: {dnscore.io/inject: enabled}}, spec: {containers: [{name: a, image: a}]}}}\n---\n\
                apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: batch, namespace: shop}\n\
                spec: {template: {metadata: {labels: {dnscore.io/inject: disabled}}, spec: {containers: [{name: a, image: a}]}}}\n";
    let found = findings_of(yaml);
    has(
        &found,
        "dnscore-grace-period",
        "shop/api",
        Severity::Warning,
    );
    let names = names(&found);
    assert!(!names.contains(&("ndots-default".into(), "shop/api".into())));
    assert!(!names.contains(&("ndots-default".into(), "other/web".into())));
    assert!(
        !names.contains(&("dnscore-grace-period".into(), "other/web".into())),
        "30s > 5s"
    );
    assert!(
        names.contains(&("ndots-default".into(), "shop/batch".into())),
        "opted out"
    );
}

#[test]
fn values_from_references_are_not_guessed() {
    let aws_node = std::fs::read_to_string(fixture("aws-node-strict.yaml"))
        .unwrap()
        .replacen(
            "- name: POD_SECURITY_GROUP_ENFORCING_MODE\n              value: strict\n",
            "- name: POD_SECURITY_GROUP_ENFORCING_MODE\n              valueFrom: {configMapKeyRef: {name: c, key: k}}\n",
            1,
        );
    assert!(aws_node.contains("configMapKeyRef: {name: c"));
    let mut objects = objects(&["nodelocaldns.yaml"]);
    objects.add_yaml("aws-node", &aws_node).unwrap();
    let mut notes = Vec::new();
    let found = doctor::check(&objects, &[], &mut notes);
    lacks(&found, "nodelocal-sgp-strict");
    assert!(notes.iter().any(|n| n.contains("reference")), "{notes:?}");
}

#[test]
fn skipping_a_check_and_the_order_of_findings() {
    let objects = objects(&[
        "eks-coredns.yaml",
        "nodelocaldns.yaml",
        "aws-node-strict.yaml",
    ]);
    let skip = vec!["coredns-autoscaling".to_owned()];
    let found = doctor::check(&objects, &skip, &mut Vec::new());
    lacks(&found, "coredns-autoscaling");
    let severities: Vec<Severity> = found.iter().map(|f| f.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(severities, sorted, "most severe first");
    assert_eq!(found[0].check, "nodelocal-sgp-strict");
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("doctor")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    // Killed after 30 s, so that a hang fails with what it printed.
    let pid = child.id();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if wait
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_err()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    let output = child.wait_with_output().unwrap();
    let _ = done.send(());
    output
}

fn run_owned(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args, None)
}

fn path(name: &str) -> String {
    fixture(name).display().to_string()
}

#[test]
fn the_binary_exits_by_severity_and_prints_a_table_or_json() {
    let healthy = run(&["-f", &path("healthy-cluster.yaml")], None);
    assert_eq!(healthy.status.code(), Some(0), "{healthy:?}");

    let eks = run(
        &[
            "-f",
            &path("eks-coredns.yaml"),
            "-f",
            &path("nodes.yaml"),
            "--format",
            "json",
        ],
        None,
    );
    assert_eq!(eks.status.code(), Some(1));
    let findings: Vec<Value> = serde_json::from_slice(&eks.stdout).unwrap();
    assert!(findings.len() >= 5);
    for finding in &findings {
        for field in [
            "check",
            "severity",
            "kind",
            "namespace",
            "name",
            "problem",
            "why",
            "fix",
        ] {
            assert!(finding.get(field).is_some(), "{field} in {finding}");
        }
    }
    // ClusterRole and ClusterRoleBinding of the add-on are skipped with a note.
    let stderr = String::from_utf8_lossy(&eks.stderr);
    assert!(stderr.contains("ClusterRole"), "{stderr}");

    let table = run(
        &["-f", "-"],
        Some(&std::fs::read_to_string(fixture("karpenter.yaml")).unwrap()),
    );
    assert_eq!(table.status.code(), Some(1));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("karpenter-interruption-queue"), "{text}");
    assert!(text.contains("why:") && text.contains("fix:"), "{text}");

    let listed = run(&["--list-checks"], None);
    assert_eq!(listed.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        doctor::CHECKS.len()
    );
}

#[test]
fn bad_input_is_a_clear_error_or_a_note_never_a_crash() {
    let broken = run(
        &["-f", "-"],
        Some("kind: ConfigMap\n---\nkind: Deployment\nspec: [unclosed\n"),
    );
    assert_eq!(broken.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    // The stream's line where the unclosed list should have ended.
    assert!(stderr.contains("-: line 5"), "{stderr}");

    let missing = run(&["-f", "/nonexistent/dump.yaml"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/dump.yaml"));

    let unknown = run(&["--skip", "coredns-replica", "-f", "-"], Some(""));
    assert_eq!(unknown.status.code(), Some(2));

    // Objects missing fields, wrong shapes, unknown kinds: notes, and no finding made up.
    let odd = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: coredns, namespace: kube-system}\n\
               spec: {replicas: three, template: 7}\n---\nkind: ConfigMap\nmetadata: {name: coredns, \
               namespace: kube-system}\ndata: {Corefile: \".:53 {\\n  health {\\n\"}\n---\n\
               kind: Widget\nmetadata: {name: w}\n---\n[1, 2]\n---\nkind: Node\nmetadata: {name: n}\n\
               status: {capacity: {cpu: lots}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: \
               {name: kube-proxy-config, namespace: kube-system}\ndata: {config: '{{{'}\n";
    let out = run(&["-f", "-", "--format", "json"], Some(odd));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Widget"), "{stderr}");
    let findings: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        findings.is_empty(),
        "nothing made up from broken objects: {findings:?}"
    );
    // Numbers that would overflow or divide by zero: no crash.
    let huge = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-proxy-config, namespace: kube-system}\n\
                data: {config: 'conntrack: {maxPerCore: 18446744073709551615, min: 0}'}\n---\n\
                kind: Node\nmetadata: {name: n0}\nstatus: {capacity: {cpu: '0', pods: '110'}}\n---\n\
                kind: Node\nmetadata: {name: n1}\nstatus: {capacity: {cpu: '4294967296', pods: '1'}}\n";
    let out = run(&["-f", "-"], Some(huge));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
}

#[test]
fn the_cluster_role_grants_get_and_list_of_what_the_live_mode_lists() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding,
    };
    use serde::Deserialize;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/doctor-rbac.yaml"),
    )
    .unwrap();
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde_norway::Value::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "Role",
            "ServiceAccount",
            "ClusterRoleBinding",
            "RoleBinding"
        ]
    );
    let cluster: ClusterRole = serde_norway::from_value(docs[0].clone()).unwrap();
    let role: Role = serde_norway::from_value(docs[1].clone()).unwrap();
    let _: ServiceAccount = serde_norway::from_value(docs[2].clone()).unwrap();
    let binding: ClusterRoleBinding = serde_norway::from_value(docs[3].clone()).unwrap();
    let role_binding: RoleBinding = serde_norway::from_value(docs[4].clone()).unwrap();
    assert_eq!(binding.role_ref.name, "dnscore-doctor");
    assert_eq!(role_binding.role_ref.kind, "Role");
    let cluster_rules = cluster.rules.unwrap();
    let role_rules = role.rules.unwrap();
    for rule in cluster_rules.iter().chain(&role_rules) {
        assert!(
            rule.verbs.iter().all(|v| v == "get" || v == "list"),
            "read-only: {rule:?}"
        );
    }
    let grants = |rules: &[PolicyRule], group: &str, resource: &str| {
        rules.iter().any(|r| {
            r.resource_names.is_none()
                && r.verbs.iter().any(|v| v == "list")
                && r.api_groups
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|g| g == group)
                && r.resources
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|x| x == resource)
        })
    };
    for (group, resource) in doctor::live::resources() {
        assert!(
            grants(&cluster_rules, group, resource) || grants(&role_rules, group, resource),
            "{group}/{resource} not listable"
        );
    }
    // ConfigMaps are listed in kube-system only, never cluster-wide.
    assert!(!grants(&cluster_rules, "", "configmaps"));
}

// The live mode: an HTTPS server in the test plays the API server.

/// API list paths and the kinds they serve.
const PATHS: [(&str, &str, &str); 13] = [
    ("/api/v1/namespaces/kube-system/services", "Service", "v1"),
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/apis/apps/v1/deployments", "Deployment", "apps/v1"),
    ("/apis/apps/v1/daemonsets", "DaemonSet", "apps/v1"),
    ("/apis/apps/v1/statefulsets", "StatefulSet", "apps/v1"),
    ("/apis/batch/v1/jobs", "Job", "batch/v1"),
    ("/apis/batch/v1/cronjobs", "CronJob", "batch/v1"),
    (
        "/apis/autoscaling/v2/horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        "autoscaling/v2",
    ),
    (
        "/apis/policy/v1/poddisruptionbudgets",
        "PodDisruptionBudget",
        "policy/v1",
    ),
    ("/api/v1/nodes", "Node", "v1"),
    (
        "/api/v1/namespaces/kube-system/configmaps",
        "ConfigMap",
        "v1",
    ),
    ("/api/v1/namespaces/kube-system/pods", "Pod", "v1"),
    (
        "/apis/vpcresources.k8s.aws/v1beta1/securitygrouppolicies",
        "SecurityGroupPolicy",
        "vpcresources.k8s.aws/v1beta1",
    ),
];

/// The list response the API server gives for `path`: items without kind and apiVersion.
fn list_response(objects: &Objects, path: &str) -> Option<Value> {
    let (_, kind, api_version) = PATHS.iter().find(|(p, _, _)| *p == path)?;
    let items: Vec<Value> = objects
        .of_kind(kind)
        .filter(|o| !path.contains("/namespaces/kube-system/") || o.namespace == "kube-system")
        .map(|o| {
            let mut item = o.tree.clone();
            if let Value::Object(map) = &mut item {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    Some(json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": {"resourceVersion": "4242"},
        "items": items,
    }))
}

/// Serves `objects` as an API server would, over HTTPS with a certificate for 127.0.0.1;
/// returns its address, the CA's PEM, and the requests it saw (method and path).
async fn api_server(objects: Objects) -> (SocketAddr, String, Arc<Mutex<Vec<String>>>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let objects = Arc::new(objects);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, objects, log) = (acceptor.clone(), objects.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let (objects, log) = (objects.clone(), log.clone());
                    async move {
                        let path = request.uri().path().to_owned();
                        log.lock()
                            .unwrap()
                            .push(format!("{} {}", request.method(), request.uri()));
                        let authorized = request
                            .headers()
                            .get("authorization")
                            .is_some_and(|h| h == "Bearer doctor-test-token");
                        let (status, body) = match list_response(&objects, &path) {
                            _ if !authorized => (
                                401,
                                json!({"kind": "Status", "apiVersion": "v1",
                                "status": "Failure", "reason": "Unauthorized", "code": 401}),
                            ),
                            Some(list) if request.method() == hyper::Method::GET => (200, list),
                            _ => (
                                404,
                                json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": "not found", "reason": "NotFound",
                                "code": 404}),
                            ),
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::from(
                            serde_json::to_vec(&body).unwrap(),
                        )));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        response.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca_cert.pem(), seen)
}

fn kubeconfig(dir: &Path, addr: SocketAddr, ca_pem: &str) -> PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: doctor\n  user:\n    token: doctor-test-token\n\
         contexts:\n- name: test\n  context: {{cluster: test, user: doctor}}\ncurrent-context: test\n"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_live_mode_gives_the_file_modes_findings_on_the_same_objects() {
    let files = [
        "eks-coredns.yaml",
        "nodes.yaml",
        "kube-proxy-config.yaml",
        "karpenter.yaml",
        "nodelocaldns.yaml",
        "aws-node-strict.yaml",
        "workloads.yaml",
    ];
    let (addr, ca, seen) = api_server(objects(&files)).await;
    let dir = std::env::temp_dir().join(format!("dnscore-doctor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = kubeconfig(&dir, addr, &ca);

    let mut file_args = vec!["--format".to_owned(), "json".to_owned()];
    for file in files {
        file_args.extend(["-f".to_owned(), path(file)]);
    }
    let live_args = [
        "--format".to_owned(),
        "json".to_owned(),
        "--kubeconfig".to_owned(),
        config.display().to_string(),
    ];
    let (from_files, live) =
        tokio::task::spawn_blocking(move || (run_owned(&file_args), run_owned(&live_args)))
            .await
            .unwrap();
    assert_eq!(live.status.code(), Some(1), "{live:?}");
    let parse = |out: &Output| -> Vec<Value> { serde_json::from_slice(&out.stdout).unwrap() };
    let (from_files, live_findings) = (parse(&from_files), parse(&live));
    assert!(from_files.len() >= 8, "{from_files:?}");
    assert_eq!(live_findings, from_files);
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|r| r.starts_with("GET ")),
            "read-only: {seen:?}"
        );
        assert!(seen.iter().any(|r| r.contains("/apis/apps/v1/deployments")));
    }

    // A wrong token: a clear error, exit 2.
    let bad = std::fs::read_to_string(&config)
        .unwrap()
        .replace("doctor-test-token", "wrong");
    std::fs::write(&config, bad).unwrap();
    let args = ["--kubeconfig".to_owned(), config.display().to_string()];
    let denied = tokio::task::spawn_blocking(move || run_owned(&args))
        .await
        .unwrap();
    assert_eq!(denied.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("cannot list"));
    let _ = std::fs::remove_dir_all(&dir);
}
