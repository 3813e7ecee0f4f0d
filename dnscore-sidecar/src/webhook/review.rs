//! One AdmissionReview in, one out: the same mutation as `inject`, as a JSONPatch.
//!
//! The pod arrives as JSON; it is turned into the YAML tree `inject` works on, changed by
//! the very same code, turned back, and the difference is the patch. Anything this does not
//! inject into is allowed unchanged: other kinds and operations, pods `inject` would skip
//! (with a warning where the owner may not expect it), and pods it cannot inject into (a
//! bad annotation, a malformed spec: allowed, with the reason as a warning). Only a request
//! that is not an AdmissionReview, which has no `uid` to answer, is refused (400).

use base64::Engine;
use serde_json::{Value, json};

use crate::inject::pod::Doc;
use crate::inject::{CONTAINER_NAME, INJECTED_ANNOTATION, InjectOptions, Outcome, SkipReason};

/// The AdmissionReview version served (the only one kube-apiserver sends since 1.22 when
/// the configuration asks for it).
pub const API_VERSION: &str = "admission.k8s.io/v1";
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

/// Answers one AdmissionReview (the request body) with the response body and what was
/// done.
pub fn review(body: &[u8], defaults: &InjectOptions) -> Result<(Value, ReviewOutcome), BadRequest> {
    let review: Value = serde_json::from_slice(body)
        .map_err(|err| BadRequest(format!("the body is not JSON: {err}")))?;
    let (api_version, kind) = (review.get("apiVersion"), review.get("kind"));
    if api_version.and_then(Value::as_str) != Some(API_VERSION)
        || kind.and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(BadRequest(format!(
            "expected an AdmissionReview of {API_VERSION}, got apiVersion {} kind {}",
            api_version.unwrap_or(&Value::Null),
            kind.unwrap_or(&Value::Null)
        )));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| BadRequest("the AdmissionReview has no request".to_owned()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| BadRequest("the request has no uid".to_owned()))?;
    let (decision, outcome) = decide(request, defaults);
    Ok((decision.response(uid), outcome))
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

fn decide(request: &Value, defaults: &InjectOptions) -> (Decision, ReviewOutcome) {
    let field = |path: &[&str]| {
        path.iter()
            .try_fold(request, |v, key| v.get(key))
            .and_then(Value::as_str)
    };
    let is_pod = field(&["kind", "kind"]) == Some("Pod") && field(&["kind", "group"]) == Some("");
    let sub_resource = field(&["subResource"]).is_some_and(|s| !s.is_empty());
    if !is_pod || sub_resource || field(&["operation"]) != Some("CREATE") {
        return (Decision::default(), ReviewOutcome::Ignored);
    }
    let Some(object) = request.get("object").filter(|o| o.is_object()) else {
        return (
            Decision::warn("not injected: the request has no pod object".to_owned()),
            ReviewOutcome::Failed,
        );
    };
    let mut original = object.clone();
    // The object normally carries its type; `inject` finds pod templates by kind.
    original["kind"] = json!("Pod");
    if original["metadata"]["annotations"][INJECTED_ANNOTATION] == "true" {
        return (sidecar_first(&original), ReviewOutcome::AlreadyInjected);
    }
    let mut options = defaults.clone();
    // A pod created by a controller has no metadata.namespace yet: the request's counts.
    if let Some(namespace) = field(&["namespace"]).filter(|ns| !ns.is_empty()) {
        namespace.clone_into(&mut options.namespace);
    }
    let failed = |reason: String| {
        (
            Decision::warn(format!("not injected: {reason}")),
            ReviewOutcome::Failed,
        )
    };
    let mut tree = match serde_norway::to_value(&original) {
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
    let changed = match serde_json::to_value(serde_norway::Value::Mapping(tree)) {
        Ok(changed) => changed,
        Err(err) => return failed(err.to_string()),
    };
    let patch = json_patch::diff(&original, &changed).0;
    let outcome = if patch.is_empty() {
        ReviewOutcome::AlreadyInjected
    } else {
        ReviewOutcome::Injected
    };
    (
        Decision {
            patch: Some(patch),
            warnings,
        },
        outcome,
    )
}

/// For a pod injected already: no patch, unless a later mutation put another init
/// container in front of the sidecar (the init containers after it need DNS), when the
/// patch puts it first again.
fn sidecar_first(pod: &Value) -> Decision {
    let Some(init) = pod["spec"]["initContainers"].as_array() else {
        return Decision::default();
    };
    match init.iter().position(|c| c["name"] == CONTAINER_NAME) {
        Some(at) if at > 0 => {
            let mut moved = pod.clone();
            if let Some(init) = moved["spec"]["initContainers"].as_array_mut() {
                let sidecar = init.remove(at);
                init.insert(0, sidecar);
            }
            Decision {
                patch: Some(json_patch::diff(pod, &moved).0),
                warnings: Vec::new(),
            }
        }
        _ => Decision::default(),
    }
}
