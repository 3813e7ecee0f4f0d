//! One AdmissionReview in, one out: the same mutation as `inject`, as a JSONPatch.
//!
//! The pod arrives as JSON; it is turned into the YAML tree `inject` works on, changed by
//! the very same code, turned back, and the difference is the patch. Anything this does not
//! inject into is allowed unchanged: other kinds and operations, pods `inject` would skip
//! (with a warning where the owner may not expect it), and pods it cannot inject into (a
//! bad annotation, a malformed spec: allowed, with the reason as a warning). Only a request
//! that is not an AdmissionReview, which has no `uid` to answer, is refused (400).

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::inject::pod::Doc;
use crate::inject::{
    ANNOTATION_PREFIX, CONTAINER_NAME, INJECTED_ANNOTATION, InjectOptions, Outcome, SkipReason,
};

/// The AdmissionReview version served (the only one kube-apiserver sends since 1.22 when
/// the configuration asks for it).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The annotation of the mirror pods the kubelet makes for static pods.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// kube-apiserver shows at most this many characters of a warning.
const MAX_WARNING: usize = 256;

/// What was done with one admission request, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewOutcome {
    /// A patch adding the sidecar.
    Injected,
    /// The pod has the sidecar already (at most a patch putting it first again).
    AlreadyInjected,
    /// A pod left alone on purpose (opted out, hostNetwork, its own nameservers...).
    Skipped,
    /// Not a Pod CREATE: allowed unchanged.
    Ignored,
    /// A pod that could not be injected into: allowed unchanged, with the reason.
    Failed,
    /// Not an AdmissionReview: answered 400.
    BadRequest,
}

impl ReviewOutcome {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::AlreadyInjected => "already_injected",
            Self::Skipped => "skipped",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
            Self::BadRequest => "bad_request",
        }
    }

    /// Every outcome, for metrics that show zeros.
    pub const ALL: [Self; 6] = [
        Self::Injected,
        Self::AlreadyInjected,
        Self::Skipped,
        Self::Ignored,
        Self::Failed,
        Self::BadRequest,
    ];
}

/// A request that is not an AdmissionReview this webhook can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// The parts of an AdmissionReview read: the pod stays unparsed until [`PodParts`] reads
/// what the injector needs of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    sub_resource: Option<String>,
    operation: Option<String>,
    namespace: Option<String>,
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// What the injector reads or writes of a pod; the rest (container args, env, volumes...)
/// is skipped while parsing, so a large pod costs no memory beyond its body. Containers and
/// init containers are kept as their names and ports (what the injector reads of them),
/// annotations as the `dnscore.io/` ones. The patch is the difference between this tree
/// before and after injection, but for `initContainers`, whose elements are not whole
/// here: its operations say where the sidecar goes ([`init_container_ops`]). Every other
/// path of the patch is a field kept whole, or a key of a map (annotations), so it means
/// the same in the whole pod.
#[derive(Deserialize)]
struct PodParts<'a> {
    #[serde(borrow)]
    metadata: Option<MetadataParts<'a>>,
    #[serde(borrow)]
    spec: Option<SpecParts<'a>>,
}

#[derive(Deserialize)]
struct MetadataParts<'a> {
    #[serde(borrow)]
    annotations: Option<std::collections::BTreeMap<String, &'a RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecParts<'a> {
    #[serde(borrow)]
    init_containers: Option<Vec<ContainerParts<'a>>>,
    #[serde(borrow)]
    containers: Option<Vec<ContainerParts<'a>>>,
    host_network: Option<&'a RawValue>,
    os: Option<&'a RawValue>,
    node_selector: Option<&'a RawValue>,
    dns_policy: Option<&'a RawValue>,
    dns_config: Option<&'a RawValue>,
    security_context: Option<&'a RawValue>,
    termination_grace_period_seconds: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ContainerParts<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    ports: Option<&'a RawValue>,
}

/// Bytes of JSON kept from a pod for the injector, at most: real pods keep a few KiB (their
/// DNS settings, security context, container names and ports); the bound keeps the memory
/// of one review small whatever the body holds, as the kept parts are parsed into trees.
const MAX_PART_BYTES: usize = 64 * 1024;

impl PodParts<'_> {
    /// The parts as a pod tree, for the injector (`kind: Pod` added: it finds pod
    /// templates by kind), and whether the pod is a static pod's mirror; `Err` with the
    /// size when the parts are over [`MAX_PART_BYTES`].
    fn tree(self) -> Result<(Value, bool), usize> {
        let raw = |v: &RawValue| v.get().len();
        let mut mirror = false;
        let mut annotations = None;
        if let Some(all) = self.metadata.as_ref().and_then(|m| m.annotations.as_ref()) {
            mirror = all.contains_key(MIRROR_ANNOTATION);
            annotations = Some(
                all.iter()
                    .filter(|(key, _)| key.starts_with(ANNOTATION_PREFIX))
                    .collect::<Vec<_>>(),
            );
        }
        let mut kept: Vec<(&str, &RawValue)> = Vec::new();
        let mut containers: Vec<(&str, &Vec<ContainerParts<'_>>)> = Vec::new();
        if let Some(spec) = &self.spec {
            for (key, value) in [
                ("hostNetwork", spec.host_network),
                ("os", spec.os),
                ("nodeSelector", spec.node_selector),
                ("dnsPolicy", spec.dns_policy),
                ("dnsConfig", spec.dns_config),
                ("securityContext", spec.security_context),
                (
                    "terminationGracePeriodSeconds",
                    spec.termination_grace_period_seconds,
                ),
            ] {
                if let Some(value) = value {
                    kept.push((key, value));
                }
            }
            for (key, list) in [
                ("initContainers", &spec.init_containers),
                ("containers", &spec.containers),
            ] {
                if let Some(list) = list {
                    containers.push((key, list));
                }
            }
        }
        let size = kept.iter().map(|(_, v)| raw(v)).sum::<usize>()
            + annotations
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + raw(v))
                .sum::<usize>()
            + containers
                .iter()
                .flat_map(|(_, list)| list.iter())
                .map(|c| 8 + c.name.map_or(0, raw) + c.ports.map_or(0, raw))
                .sum::<usize>();
        if size > MAX_PART_BYTES {
            return Err(size);
        }
        let value = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).unwrap_or_default();
        let mut pod = json!({ "kind": "Pod" });
        if self.metadata.is_some() {
            pod["metadata"] = json!({});
            if let Some(annotations) = annotations {
                let map = annotations
                    .into_iter()
                    .map(|(k, v)| (k.clone(), value(v)))
                    .collect();
                pod["metadata"]["annotations"] = Value::Object(map);
            }
        }
        if self.spec.is_some() {
            let mut spec = serde_json::Map::new();
            for (key, list) in containers {
                let list = list
                    .iter()
                    .map(|c| {
                        let mut container = serde_json::Map::new();
                        for (field, v) in [("name", c.name), ("ports", c.ports)] {
                            if let Some(v) = v {
                                container.insert(field.to_owned(), value(v));
                            }
                        }
                        Value::Object(container)
                    })
                    .collect();
                spec.insert(key.to_owned(), Value::Array(list));
            }
            for (key, v) in kept {
                spec.insert(key.to_owned(), value(v));
            }
            pod["spec"] = Value::Object(spec);
        }
        Ok((pod, mirror))
    }
}

/// The operations that put `sidecar` first in the pod's init containers, replacing the one
/// at `existing` (if any); `had_list`: whether the pod has a list of them at all.
fn init_container_ops(
    had_list: bool,
    existing: Option<usize>,
    sidecar: Value,
) -> Vec<json_patch::PatchOperation> {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, PatchOperation, RemoveOperation};
    let at = |index: usize| PointerBuf::from_tokens(["spec", "initContainers", &index.to_string()]);
    if !had_list {
        return vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec", "initContainers"]),
            value: Value::Array(vec![sidecar]),
        })];
    }
    let mut ops = Vec::new();
    if let Some(index) = existing {
        ops.push(PatchOperation::Remove(RemoveOperation { path: at(index) }));
    }
    ops.push(PatchOperation::Add(AddOperation {
        path: at(0),
        value: sidecar,
    }));
    ops
}

/// Answers one AdmissionReview (the request body) with the response body and what was
/// done.
pub fn review(body: &[u8], defaults: &InjectOptions) -> Result<(Value, ReviewOutcome), BadRequest> {
    let review: ReviewIn<'_> = serde_json::from_slice(body)
        .map_err(|err| BadRequest(format!("not an AdmissionReview: {err}")))?;
    let (api_version, kind) = (review.api_version.as_deref(), review.kind.as_deref());
    if api_version != Some(API_VERSION) || kind != Some("AdmissionReview") {
        return Err(BadRequest(format!(
            "expected an AdmissionReview of {API_VERSION}, got apiVersion {} kind {}",
            api_version.unwrap_or("(none)"),
            kind.unwrap_or("(none)")
        )));
    }
    let request = review
        .request
        .ok_or_else(|| BadRequest("the AdmissionReview has no request".to_owned()))?;
    let uid = request
        .uid
        .clone()
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| BadRequest("the request has no uid".to_owned()))?;
    let (decision, outcome) = decide(&request, defaults);
    Ok((decision.response(&uid), outcome))
}

/// What to answer, apart from the uid.
#[derive(Debug, Default)]
struct Decision {
    patch: Option<Vec<json_patch::PatchOperation>>,
    warnings: Vec<String>,
}

impl Decision {
    fn warn(warning: String) -> Self {
        Self {
            patch: None,
            warnings: vec![warning],
        }
    }

    fn response(self, uid: &str) -> Value {
        let mut response = json!({ "uid": uid, "allowed": true });
        if let Some(patch) = self.patch.filter(|p| !p.is_empty()) {
            let patch = serde_json::to_vec(&patch).unwrap_or_default();
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
        }
        if !self.warnings.is_empty() {
            let warnings: Vec<String> = self
                .warnings
                .into_iter()
                .map(|w| {
                    let w = format!("dnscore: {w}");
                    match w.char_indices().nth(MAX_WARNING) {
                        Some((at, _)) => w[..at].to_owned(),
                        None => w,
                    }
                })
                .collect();
            response["warnings"] = json!(warnings);
        }
        json!({ "apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response })
    }
}

fn decide(request: &RequestIn<'_>, defaults: &InjectOptions) -> (Decision, ReviewOutcome) {
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.kind == "Pod" && k.group.is_empty());
    let sub_resource = request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    if !is_pod || sub_resource || request.operation.as_deref() != Some("CREATE") {
        return (Decision::default(), ReviewOutcome::Ignored);
    }
    let failed = |reason: String| {
        (
            Decision::warn(format!("not injected: {reason}")),
            ReviewOutcome::Failed,
        )
    };
    let Some(object) = request.object else {
        return failed("the request has no pod object".to_owned());
    };
    let parts = match serde_json::from_str::<PodParts<'_>>(object.get()) {
        Ok(parts) => parts.tree(),
        Err(err) => return failed(format!("the pod does not read as a Pod: {err}")),
    };
    let (mut original, mirror) = match parts {
        Ok(parts) => parts,
        Err(size) => {
            return failed(format!(
                "the pod's fields where the sidecar goes take {size} bytes (at most \
                 {MAX_PART_BYTES})"
            ));
        }
    };
    if original["metadata"]["annotations"][INJECTED_ANNOTATION] == "true" {
        return (sidecar_first(&original), ReviewOutcome::AlreadyInjected);
    }
    // A static pod's mirror: the kubelet runs the manifest on its disk, not this object.
    if mirror {
        return (Decision::default(), ReviewOutcome::Skipped);
    }
    let mut options = defaults.clone();
    // A pod created by a controller has no metadata.namespace yet: the request's counts.
    if let Some(namespace) = request.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        namespace.clone_into(&mut options.namespace);
    }
    let tree = serde_norway::to_value(&original);
    let mut tree = match tree {
        Ok(serde_norway::Value::Mapping(tree)) => tree,
        Ok(_) => return failed("the pod is not an object".to_owned()),
        Err(err) => return failed(err.to_string()),
    };
    let mut reports = Vec::new();
    let doc = Doc {
        document: 1,
        options: &options,
    };
    if let Err(err) = doc.object(&mut tree, &mut reports) {
        return failed(err.to_string());
    }
    let Some(report) = reports.pop() else {
        return failed("the pod was not recognised".to_owned());
    };
    let warnings = report.notes;
    match report.outcome {
        Outcome::Injected => {}
        Outcome::Skipped(reason) => {
            let mut decision = Decision::default();
            if reason != SkipReason::OptedOut {
                decision.warnings.push(format!("not injected: {reason}"));
            }
            return (decision, ReviewOutcome::Skipped);
        }
        other => return failed(format!("unexpected outcome: {other}")),
    }
    let mut changed = match serde_json::to_value(serde_norway::Value::Mapping(tree)) {
        Ok(changed) => changed,
        Err(err) => return failed(err.to_string()),
    };
    // initContainers by hand (its elements are names and ports here), the rest by diff.
    let before = take_init_containers(&mut original);
    let sidecar = match take_init_containers(&mut changed) {
        Some(Value::Array(after)) => after.into_iter().next(),
        _ => None,
    };
    let Some(sidecar) = sidecar.filter(|c| c["name"] == CONTAINER_NAME) else {
        return failed("the sidecar was not added".to_owned());
    };
    let existing = before.as_ref().and_then(sidecar_position);
    // A sidecar there already (without the annotation) is replaced: its other fields are
    // not read here, so it is never known to be the same.
    let mut patch = init_container_ops(matches!(before, Some(Value::Array(_))), existing, sidecar);
    patch.extend(json_patch::diff(&original, &changed).0);
    (
        Decision {
            patch: Some(patch),
            warnings,
        },
        ReviewOutcome::Injected,
    )
}

/// Takes `spec.initContainers` out of a pod tree.
fn take_init_containers(pod: &mut Value) -> Option<Value> {
    pod.get_mut("spec")?
        .as_object_mut()?
        .remove("initContainers")
}

/// Where the sidecar is in a list of init containers.
fn sidecar_position(init: &Value) -> Option<usize> {
    init.as_array()?
        .iter()
        .position(|c| c["name"] == CONTAINER_NAME)
}

/// For a pod injected already: no patch, unless a later mutation put another init
/// container in front of the sidecar (the init containers after it need DNS), when the
/// patch moves it first again.
fn sidecar_first(pod: &Value) -> Decision {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{MoveOperation, PatchOperation};
    match sidecar_position(&pod["spec"]["initContainers"]) {
        Some(at) if at > 0 => Decision {
            patch: Some(vec![PatchOperation::Move(MoveOperation {
                from: PointerBuf::from_tokens(["spec", "initContainers", &at.to_string()]),
                path: PointerBuf::from_tokens(["spec", "initContainers", "0"]),
            })]),
            warnings: Vec::new(),
        },
        _ => Decision::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(object: Value, request: Value) -> Value {
        let mut review = json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": object,
            }
        });
        if let (Some(r), Value::Object(extra)) = (review["request"].as_object_mut(), request) {
            r.extend(extra);
        }
        review
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": null, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app", "env": [
                {"name": "A", "value": "true"}, {"name": "B", "value": "1"},
                {"name": "C", "value": "null"}, {"name": "D", "value": "0x10"}
            ]}]}
        })
    }

    fn answer(review: &Value) -> (Value, ReviewOutcome) {
        let body = serde_json::to_vec(review).unwrap();
        let (answer, outcome) = super::review(&body, &InjectOptions::default()).unwrap();
        assert_eq!(answer["response"]["uid"], "u-1");
        assert_eq!(answer["response"]["allowed"], true);
        (answer["response"].clone(), outcome)
    }

    fn patch(response: &Value) -> Vec<Value> {
        let text = response["patch"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn the_patch_touches_only_what_inject_owns_and_keeps_strings_as_strings() {
        let (response, outcome) = answer(&review_of(
            pod(json!({"app.example/flag": "true", "n": "1", "z": "null"})),
            json!({}),
        ));
        assert_eq!(outcome, ReviewOutcome::Injected);
        let owned = [
            "/spec/initContainers",
            "/spec/dnsPolicy",
            "/spec/dnsConfig",
            "/spec/securityContext",
            "/metadata/annotations/dnscore.io~1injected",
        ];
        for op in patch(&response) {
            let path = op["path"].as_str().unwrap();
            assert!(owned.iter().any(|o| path.starts_with(o)), "{op}");
        }
    }

    /// The injector run on the whole pod, as `inject` runs it, and the patch applied.
    fn injected_whole(pod: &Value) -> Value {
        let serde_norway::Value::Mapping(mut tree) = serde_norway::to_value(pod).unwrap() else {
            panic!("a pod is a mapping");
        };
        let options = InjectOptions {
            namespace: "shop".into(),
            ..InjectOptions::default()
        };
        let doc = Doc {
            document: 1,
            options: &options,
        };
        doc.object(&mut tree, &mut Vec::new()).unwrap();
        serde_json::to_value(serde_norway::Value::Mapping(tree)).unwrap()
    }

    #[test]
    fn the_patch_of_the_parts_read_gives_the_pod_inject_makes_of_the_whole() {
        let mut rich = pod(json!({"team": "shop"}));
        rich["metadata"]["labels"] = json!({"app": "web"});
        rich["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m", "args": ["up"]}]);
        rich["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}]);
        rich["spec"]["containers"][0]["args"] = json!(["--a", "--b"]);
        rich["spec"]["volumes"] = json!([{"name": "v", "emptyDir": {}}]);
        rich["spec"]["securityContext"] =
            json!({"runAsUser": 1000, "sysctls": [{"name": "x", "value": "1"}]});
        rich["spec"]["dnsConfig"] =
            json!({"searches": ["corp.example"], "options": [{"name": "edns0"}]});
        rich["spec"]["terminationGracePeriodSeconds"] = json!(3);
        // A sidecar already there (an old one, without the annotation), second.
        let mut stale = rich.clone();
        stale["spec"]["initContainers"] = json!([
            {"name": "migrate", "image": "m", "args": ["up"]},
            {"name": "dnscore", "image": "old", "args": ["--listen=127.0.0.1:53"]}
        ]);
        for object in [pod(json!({})), pod(Value::Null), rich, stale] {
            let (response, outcome) = answer(&review_of(object.clone(), json!({})));
            assert_eq!(outcome, ReviewOutcome::Injected, "{response}");
            let patch: json_patch::Patch =
                serde_json::from_value(Value::Array(patch(&response))).unwrap();
            let mut patched = object.clone();
            json_patch::patch(&mut patched, &patch).unwrap();
            assert_eq!(patched, injected_whole(&object));
        }
    }

    #[test]
    fn other_requests_are_allowed_unchanged() {
        for (object, request) in [
            (pod(json!({})), json!({"subResource": "status"})),
            (pod(json!({})), json!({"operation": "UPDATE"})),
            (
                pod(json!({})),
                json!({"kind": {"group": "example.com", "version": "v1", "kind": "Pod"}}),
            ),
            (
                pod(json!({"kubernetes.io/config.mirror": "abc"})),
                json!({}),
            ),
            (pod(json!({"dnscore.io/inject": "disabled"})), json!({})),
        ] {
            let (response, outcome) = answer(&review_of(object, request.clone()));
            assert!(response.get("patch").is_none(), "{request}: {response}");
            assert_ne!(outcome, ReviewOutcome::Injected);
        }
        let mut windows = pod(json!({}));
        windows["spec"]["os"] = json!({"name": "windows"});
        let (response, outcome) = answer(&review_of(windows, json!({})));
        assert_eq!(outcome, ReviewOutcome::Skipped);
        assert!(
            response["warnings"][0]
                .as_str()
                .unwrap()
                .contains("Windows")
        );
    }

    #[test]
    fn requests_without_a_uid_or_of_another_kind_are_bad() {
        for body in [
            json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": {"uid": ""}}),
            json!({"apiVersion": API_VERSION, "kind": "AdmissionReview"}),
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                   "request": {"uid": "u"}}),
            json!([1, 2]),
        ] {
            let bytes = serde_json::to_vec(&body).unwrap();
            assert!(review(&bytes, &InjectOptions::default()).is_err(), "{body}");
        }
    }

    #[test]
    fn a_pod_too_large_where_the_sidecar_goes_is_allowed_with_a_warning() {
        let mut large = pod(json!({}));
        large["spec"]["dnsConfig"] = json!({"options": vec![json!({"name": "x"}); 10_000]});
        let (response, outcome) = answer(&review_of(large, json!({})));
        assert_eq!(outcome, ReviewOutcome::Failed);
        assert!(response.get("patch").is_none());
        assert!(
            response["warnings"][0].as_str().unwrap().contains("bytes"),
            "{response}"
        );
        // Large where the injector does not look (an app container's args): injected.
        let mut args = pod(json!({}));
        args["spec"]["containers"][0]["args"] = json!(vec!["--flag"; 100_000]);
        let (_, outcome) = answer(&review_of(args, json!({})));
        assert_eq!(outcome, ReviewOutcome::Injected);
    }

    #[test]
    fn warnings_are_cut_on_a_character_boundary() {
        let long = "é".repeat(400);
        let decision = Decision::warn(long);
        let response = decision.response("u");
        let warning = response["response"]["warnings"][0].as_str().unwrap();
        assert_eq!(warning.chars().count(), MAX_WARNING);
    }
}
