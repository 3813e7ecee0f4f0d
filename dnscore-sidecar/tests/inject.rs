//! `inject` on sample manifests: every output document must deserialize as its typed
//! Kubernetes object (k8s-openapi) *and* serialize back to the same tree, which catches wrong
//! types and misspelled or misplaced fields alike. Also checks deploy/deployment.yaml.

use std::time::Duration;

use dnscore_sidecar::inject::{
    CONTAINER_NAME, InjectError, InjectOptions, Outcome, SkipReason, UNPRIVILEGED_PORT_SYSCTL,
    inject,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_norway::Value;

mod common;
use common::{documents, kind, name, typed};

const APP: &str = include_str!("fixtures/app.yaml");
const EXAMPLE: &str = include_str!("../deploy/deployment.yaml");

/// The pod spec of a workload document, through its typed object.
fn pod_spec(doc: &Value) -> PodSpec {
    match kind(doc) {
        "Pod" => typed::<Pod>(doc).spec,
        "Deployment" => typed::<Deployment>(doc).spec.unwrap().template.spec,
        "StatefulSet" => typed::<StatefulSet>(doc).spec.unwrap().template.spec,
        "DaemonSet" => typed::<DaemonSet>(doc).spec.unwrap().template.spec,
        "Job" => typed::<Job>(doc).spec.unwrap().template.spec,
        "CronJob" => {
            typed::<CronJob>(doc)
                .spec
                .unwrap()
                .job_template
                .spec
                .unwrap()
                .template
                .spec
        }
        other => panic!("not a workload: {other}"),
    }
    .unwrap()
}

fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .unwrap()
}

/// The names of a pod spec's init containers, in order.
fn init_names(spec: &PodSpec) -> Vec<&str> {
    spec.init_containers
        .as_deref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect()
}

/// The properties every injected pod must have.
fn assert_injected(spec: &PodSpec, namespace: &str, image: &str) {
    let init = spec.init_containers.as_deref().unwrap();
    let sidecar = &init[0];
    assert_eq!(sidecar.name, CONTAINER_NAME, "the sidecar comes first");
    assert_eq!(init.iter().filter(|c| c.name == CONTAINER_NAME).count(), 1);
    assert!(spec.containers.iter().all(|c| c.name != CONTAINER_NAME));
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sidecar.image.as_deref(), Some(image));
    let args = sidecar.args.as_deref().unwrap();
    for arg in [
        "--listen=127.0.0.1:53",
        "--upstream=10.100.0.10:53",
        "--metrics-listen=0.0.0.0:9153",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} missing from {args:?}");
    }
    assert!(args.iter().any(|a| a.starts_with("--lameduck=")));
    for (probe, path) in [
        (&sidecar.startup_probe, "/ready"),
        (&sidecar.liveness_probe, "/health"),
        (&sidecar.readiness_probe, "/ready"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(9153));
    }
    let resources = sidecar.resources.as_ref().unwrap();
    assert!(resources.requests.as_ref().unwrap().contains_key("cpu"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65_532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_BIND_SERVICE".to_owned()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));

    assert_eq!(spec.dns_policy.as_deref(), Some("None"));
    let dns = spec.dns_config.as_ref().unwrap();
    assert_eq!(
        dns.nameservers.as_deref(),
        Some(&["127.0.0.1".to_owned()][..])
    );
    let searches = dns.searches.as_deref().unwrap();
    assert_eq!(
        searches[..3],
        [
            format!("{namespace}.svc.cluster.local"),
            "svc.cluster.local".to_owned(),
            "cluster.local".to_owned()
        ]
    );
    let options = dns.options.as_deref().unwrap();
    assert_eq!(
        options
            .iter()
            .filter(|o| o.name.as_deref() == Some("ndots"))
            .count(),
        1
    );
    let sysctls = spec
        .security_context
        .as_ref()
        .unwrap()
        .sysctls
        .as_deref()
        .unwrap();
    let sysctl = sysctls
        .iter()
        .find(|s| s.name == UNPRIVILEGED_PORT_SYSCTL)
        .unwrap();
    assert_eq!(sysctl.value, "53");
}

fn ndots(spec: &PodSpec) -> String {
    let options = spec
        .dns_config
        .as_ref()
        .unwrap()
        .options
        .as_deref()
        .unwrap();
    let ndots = options.iter().find(|o| o.name.as_deref() == Some("ndots"));
    ndots.unwrap().value.clone().unwrap()
}

#[test]
fn every_workload_kind_gets_the_native_sidecar_and_stays_a_valid_typed_object() {
    let report = inject(APP, &InjectOptions::default()).unwrap();
    let docs = documents(&report.output);
    assert_eq!(docs.len(), 12, "no document is lost or added");
    for (kind_, name_, namespace) in [
        ("Deployment", "web", "shop"),
        ("StatefulSet", "db", "default"),
        ("DaemonSet", "log-agent", "logging"),
        ("Job", "report", "batch"),
        ("CronJob", "nightly", "batch"),
        ("Pod", "debug", "default"),
    ] {
        let spec = pod_spec(find(&docs, kind_, name_));
        assert_injected(&spec, namespace, "ghcr.io/dnscore/dnscore-sidecar:0.1.0");
    }
    // The ones left alone are still valid too.
    for (kind_, name_) in [
        ("DaemonSet", "node-exporter"),
        ("Pod", "custom-dns"),
        ("Deployment", "legacy"),
    ] {
        let spec = pod_spec(find(&docs, kind_, name_));
        assert!(spec.init_containers.is_none());
    }
    assert_eq!(report.injected(), 6);
}

#[test]
fn other_kinds_and_skipped_pods_are_copied_byte_for_byte() {
    let report = inject(APP, &InjectOptions::default()).unwrap();
    // Split the input at its markers and find each untouched document verbatim.
    let input_docs: Vec<&str> = APP.split("\n---\n").collect();
    for (index, wanted) in [
        (0, "ConfigMap"),
        (1, "Service"),
        (8, "node-exporter"),
        (9, "custom-dns"),
        (10, "legacy"),
    ] {
        let text = input_docs[index];
        assert!(text.contains(wanted));
        assert!(
            report.output.contains(text),
            "document {index} changed:\n{text}"
        );
    }
    assert!(
        report
            .output
            .contains("name: web-config # a trailing comment that must survive")
    );
    let outcome = |name: &str| {
        report
            .objects
            .iter()
            .find(|o| o.name == name)
            .unwrap()
            .outcome
            .clone()
    };
    assert_eq!(outcome("web-config"), Outcome::NotAWorkload);
    assert_eq!(
        outcome("node-exporter"),
        Outcome::Skipped(SkipReason::HostNetwork)
    );
    assert_eq!(
        outcome("custom-dns"),
        Outcome::Skipped(SkipReason::CustomNameservers)
    );
    assert_eq!(outcome("legacy"), Outcome::Skipped(SkipReason::OptedOut));
    assert_eq!(
        outcome("legacy-batch"),
        Outcome::Skipped(SkipReason::OptedOut)
    );
    // A rewritten document keeps its marker and its head comment.
    assert!(
        report
            .output
            .contains("---\n# The web front end.\napiVersion: apps/v1\n")
    );
}

#[test]
fn injecting_twice_gives_the_same_output_as_once() {
    let options = InjectOptions::default();
    let once = inject(APP, &options).unwrap();
    let twice = inject(&once.output, &options).unwrap();
    assert_eq!(twice.output, once.output);
    assert_eq!(twice.injected(), 0);
    assert_eq!(
        twice
            .objects
            .iter()
            .filter(|o| o.outcome == Outcome::AlreadyInjected)
            .count(),
        6
    );
}

#[test]
fn a_pods_own_dns_settings_init_containers_and_sysctls_are_merged_not_replaced() {
    let report = inject(APP, &InjectOptions::default()).unwrap();
    let docs = documents(&report.output);

    let web = pod_spec(find(&docs, "Deployment", "web"));
    let init = init_names(&web);
    assert_eq!(
        init,
        ["dnscore", "migrate"],
        "the sidecar starts before other init containers"
    );
    let dns = web.dns_config.as_ref().unwrap();
    assert_eq!(
        dns.searches.as_deref().unwrap().last().map(String::as_str),
        Some("shop.example.internal")
    );
    let options: Vec<&str> = dns
        .options
        .as_deref()
        .unwrap()
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    assert_eq!(options, ["ndots", "single-request-reopen", "timeout"]);
    assert_eq!(ndots(&web), "5");
    assert_eq!(web.termination_grace_period_seconds, Some(45));

    let db_doc = find(&docs, "StatefulSet", "db");
    let db = pod_spec(db_doc);
    assert_eq!(ndots(&db), "2", "a pod's own ndots is kept unless forced");
    assert_eq!(db.security_context.as_ref().unwrap().fs_group, Some(999));
    let annotations = &db_doc["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["example.com/owner"].as_str(), Some("team-db"));
    assert_eq!(annotations["dnscore.io/injected"].as_str(), Some("true"));
    let db_report = report.objects.iter().find(|o| o.name == "db").unwrap();
    assert!(
        db_report.notes.iter().any(|n| n.contains("lowered")),
        "{db_report}"
    );
}

#[test]
fn new_options_update_an_injected_manifest_in_place() {
    let once = inject(APP, &InjectOptions::default()).unwrap();
    let options = InjectOptions {
        image: "ghcr.io/dnscore/dnscore-sidecar:0.2.0".to_owned(),
        ndots: Some(2),
        lameduck: Duration::from_secs(30),
        ..InjectOptions::default()
    };
    let again = inject(&once.output, &options).unwrap();
    assert_eq!(again.injected(), 6);
    let docs = documents(&again.output);
    let web = pod_spec(find(&docs, "Deployment", "web"));
    assert_injected(&web, "shop", "ghcr.io/dnscore/dnscore-sidecar:0.2.0");
    assert_eq!(ndots(&web), "2");
    assert!(
        web.init_containers.unwrap()[0]
            .args
            .as_ref()
            .unwrap()
            .contains(&"--lameduck=30s".to_owned())
    );
    // The default grace period (30 s) is no longer than the lameduck: say so.
    let debug = again.objects.iter().find(|o| o.name == "debug").unwrap();
    assert!(
        debug
            .notes
            .iter()
            .any(|n| n.contains("terminationGracePeriodSeconds"))
    );
    let web_report = again.objects.iter().find(|o| o.name == "web").unwrap();
    assert!(
        web_report.notes.is_empty(),
        "45 s grace is enough: {web_report}"
    );
}

#[test]
fn another_cluster_domain_reaches_the_search_list_and_the_sidecars_ttl_floor() {
    let args = |options: &InjectOptions| {
        let out = inject(APP, options).unwrap();
        let docs = documents(&out.output);
        let web = pod_spec(find(&docs, "Deployment", "web"));
        let search = web.dns_config.as_ref().unwrap().searches.clone().unwrap();
        (
            search,
            web.init_containers.unwrap()[0].args.clone().unwrap(),
        )
    };
    let (search, default_args) = args(&InjectOptions::default());
    assert!(
        search.contains(&"svc.cluster.local".to_owned()),
        "{search:?}"
    );
    assert!(
        !default_args
            .iter()
            .any(|a| a.starts_with("--cluster-domain"))
    );
    let (search, other_args) = args(&InjectOptions {
        cluster_domain: "kube.example".to_owned(),
        ..InjectOptions::default()
    });
    assert!(
        search.contains(&"svc.kube.example".to_owned()),
        "{search:?}"
    );
    assert!(
        !search.iter().any(|d| d.ends_with("cluster.local")),
        "{search:?}"
    );
    assert!(other_args.contains(&"--cluster-domain=kube.example".to_owned()));
    let bad = InjectOptions {
        cluster_domain: "kube..example".to_owned(),
        ..InjectOptions::default()
    };
    assert!(matches!(
        inject(APP, &bad),
        Err(InjectError::InvalidOption {
            option: "cluster_domain",
            ..
        })
    ));
}

#[test]
fn the_deploy_example_is_valid_and_exactly_what_inject_makes() {
    let docs = documents(EXAMPLE);
    assert_eq!(docs.len(), 1);
    let deployment: Deployment = typed(&docs[0]);
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    assert_injected(&spec, "default", "ghcr.io/dnscore/dnscore-sidecar:0.1.0");
    assert_eq!(ndots(&spec), "5");
    let report = inject(EXAMPLE, &InjectOptions::default()).unwrap();
    assert_eq!(report.objects[0].outcome, Outcome::AlreadyInjected);
    assert_eq!(report.output, EXAMPLE);
}

#[test]
fn a_list_has_each_item_injected() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x}\n  spec:\n    containers: [{name: a, image: a}]\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n";
    let report = inject(list, &InjectOptions::default()).unwrap();
    assert_eq!(report.injected(), 1);
    assert_eq!(report.objects.len(), 2);
    let docs = documents(&report.output);
    let pod = &docs[0]["items"][0];
    assert_injected(&pod_spec(pod), "x", "ghcr.io/dnscore/dnscore-sidecar:0.1.0");
}

#[test]
fn bad_input_fails_with_the_document_and_what_to_fix() {
    let options = InjectOptions::default();
    let broken = "kind: ConfigMap\n---\nkind: Pod\nspec: [unclosed\n";
    match inject(broken, &options) {
        Err(InjectError::Parse { document, line, .. }) => assert_eq!((document, line), (2, 2)),
        other => panic!("{other:?}"),
    }
    let no_template =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n";
    match inject(no_template, &options) {
        Err(err @ InjectError::Malformed { .. }) => {
            assert!(err.to_string().contains("spec.template"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    let no_upstream = InjectOptions {
        upstreams: Vec::new(),
        ..InjectOptions::default()
    };
    assert!(matches!(
        inject("", &no_upstream),
        Err(InjectError::NoUpstream)
    ));
}

#[test]
fn empty_and_comment_only_streams_pass_through() {
    let options = InjectOptions::default();
    for input in ["", "# nothing\n", "---\n---\n# c\n"] {
        let report = inject(input, &options).unwrap();
        assert_eq!(report.output, input);
        assert!(report.objects.is_empty());
    }
}

#[test]
fn pod_template_annotations_tune_the_sidecar_and_a_fallback_keeps_dns_during_restarts() {
    let manifest = "apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata:
      labels: {app: api}
      annotations:
        dnscore.io/upstream: 10.0.0.53
        dnscore.io/ndots: \"1\"
        dnscore.io/image: registry.internal/dnscore:1
    spec:
      containers: [{name: api, image: api:1}]
";
    let options = InjectOptions {
        fallback_nameserver: Some("10.100.0.10".parse().unwrap()),
        ..InjectOptions::default()
    };
    let report = inject(manifest, &options).unwrap();
    let docs = documents(&report.output);
    let spec = pod_spec(&docs[0]);
    let sidecar = &spec.init_containers.as_deref().unwrap()[0];
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.internal/dnscore:1")
    );
    let args = sidecar.args.as_deref().unwrap();
    assert!(
        args.contains(&"--upstream=10.0.0.53:53".to_owned()),
        "{args:?}"
    );
    assert!(!args.contains(&"--upstream=10.100.0.10:53".to_owned()));
    assert_eq!(ndots(&spec), "1");
    let dns = spec.dns_config.as_ref().unwrap();
    assert_eq!(
        dns.nameservers.as_deref().unwrap(),
        ["127.0.0.1", "10.100.0.10"]
    );
    let options_set: Vec<(&str, &str)> = dns
        .options
        .as_deref()
        .unwrap()
        .iter()
        .map(|o| (o.name.as_deref().unwrap(), o.value.as_deref().unwrap()))
        .collect();
    assert!(options_set.contains(&("timeout", "1")), "{options_set:?}");
    assert!(options_set.contains(&("attempts", "2")), "{options_set:?}");
    // Idempotent with the fallback too.
    let again = inject(&report.output, &options).unwrap();
    assert_eq!(again.output, report.output);
    assert_eq!(again.objects[0].outcome, Outcome::AlreadyInjected);

    let bad = manifest.replace("10.0.0.53", "kube-dns");
    match inject(&bad, &InjectOptions::default()) {
        Err(err @ InjectError::Annotation { .. }) => {
            let text = err.to_string();
            assert!(text.contains("dnscore.io/upstream"), "{text}");
            assert!(text.contains("api"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_sidecar_is_moved_back_to_the_front_of_the_init_containers() {
    let options = InjectOptions::default();
    let once = inject(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  \
         initContainers: [{name: migrate, image: m}]\n  containers: [{name: a, image: a}]\n",
        &options,
    )
    .unwrap();
    let mut doc = documents(&once.output).remove(0);
    let init = doc["spec"]["initContainers"].as_sequence_mut().unwrap();
    let sidecar = init.remove(0);
    init.push(sidecar);
    let moved = serde_norway::to_string(&doc).unwrap();
    let report = inject(&moved, &options).unwrap();
    assert_eq!(report.objects[0].outcome, Outcome::Injected);
    let spec = pod_spec(&documents(&report.output)[0]);
    let names = init_names(&spec);
    assert_eq!(names, [CONTAINER_NAME, "migrate"]);
}
