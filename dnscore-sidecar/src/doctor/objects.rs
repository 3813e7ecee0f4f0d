//! The cluster objects the checks read, from YAML files (`kubectl get ... -o yaml`) or from
//! the API server, in one shape: JSON trees with their kind, namespace and name.

use serde_json::Value;

/// One object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Its kind (`Deployment`).
    pub kind: String,
    /// Its `metadata.namespace`, empty for cluster-scoped objects.
    pub namespace: String,
    /// Its `metadata.name`.
    pub name: String,
    /// The whole object.
    pub tree: Value,
}

impl Object {
    /// Reads an object from its tree; `None` when it has no kind or no name.
    pub fn from_tree(tree: Value) -> Option<Self> {
        let kind = tree.get("kind")?.as_str()?.to_owned();
        let metadata = tree.get("metadata")?;
        let name = metadata.get("name")?.as_str()?.to_owned();
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        Some(Self {
            kind,
            namespace,
            name,
            tree,
        })
    }

    /// The value at a path of keys (`["spec", "replicas"]`).
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        at(&self.tree, path)
    }

    /// `kind namespace/name`, or `kind name` for cluster-scoped objects.
    pub fn label(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// The pod template of a workload (or the spec of a Pod): its `metadata` and `spec`.
    pub fn pod_template(&self) -> Option<&Value> {
        match self.kind.as_str() {
            "Pod" => Some(&self.tree),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                self.at(&["spec", "template"])
            }
            "CronJob" => self.at(&["spec", "jobTemplate", "spec", "template"]),
            _ => None,
        }
        // A template that is not an object is no template.
        .filter(|t| t.get("spec").is_some_and(Value::is_object))
    }
}

/// The value at a path of keys.
pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// The kinds the checks read; others are skipped with a note.
pub const KINDS: [&str; 13] = [
    "Deployment",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
    "Pod",
    "ConfigMap",
    "Service",
    "Node",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "SecurityGroupPolicy",
    "Namespace",
];

/// Why an input was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A file could not be read.
    #[error("{source_name}: cannot read: {error}")]
    Read {
        /// The file (`-` for standard input).
        source_name: String,
        /// The system's error.
        error: std::io::Error,
    },
    /// A document is not YAML.
    #[error("{source_name}: line {line}: not valid YAML: {error}")]
    Yaml {
        /// The file.
        source_name: String,
        /// 1-based line of the error.
        line: usize,
        /// The parser's message.
        error: String,
    },
}

/// The objects read, and notes on what was skipped.
#[derive(Debug, Default)]
pub struct Objects {
    /// Every object of a kind the checks read.
    pub objects: Vec<Object>,
    /// One line per document or item that could not be read, and why.
    pub notes: Vec<String>,
    /// Objects of kinds no check reads (RBAC, Secrets...), counted by kind.
    pub skipped: std::collections::BTreeMap<String, usize>,
}

impl Objects {
    /// Adds the objects of a YAML stream (single objects, `List`s, many documents).
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Result<(), InputError> {
        use serde::Deserialize;
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let value =
                serde_norway::Value::deserialize(document).map_err(|err| InputError::Yaml {
                    source_name: source_name.to_owned(),
                    line: err.location().map_or(1, |l| l.line()),
                    error: err.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            // Tags and non-string keys have no JSON form: say so, skip the document.
            match serde_json::to_value(&value) {
                Ok(tree) => self.add_tree(&format!("{source_name}: document {}", index + 1), tree),
                Err(err) => self.notes.push(format!(
                    "{source_name}: document {}: skipped, not an object: {err}",
                    index + 1
                )),
            }
        }
        Ok(())
    }

    /// Adds an object or a `List` (`kind: List` or `*List`) of them.
    pub fn add_tree(&mut self, origin: &str, tree: Value) {
        let kind = tree.get("kind").and_then(Value::as_str).unwrap_or("");
        if (kind == "List" || kind.ends_with("List"))
            && tree.get("items").is_some_and(Value::is_array)
        {
            // API list responses leave kind and apiVersion out of their items.
            let item_kind = kind.strip_suffix("List").unwrap_or("").to_owned();
            let api_version = tree.get("apiVersion").cloned();
            if let Some(Value::Array(items)) = tree.get("items") {
                for (index, item) in items.iter().enumerate() {
                    let mut item = item.clone();
                    if let Value::Object(map) = &mut item
                        && !item_kind.is_empty()
                        && !map.contains_key("kind")
                    {
                        map.insert("kind".into(), Value::String(item_kind.clone()));
                        if let Some(version) = &api_version {
                            map.entry("apiVersion").or_insert(version.clone());
                        }
                    }
                    self.add_tree(&format!("{origin}, item {}", index + 1), item);
                }
            }
            return;
        }
        match Object::from_tree(tree) {
            // The same object in two files (or a file and a List) counts once: the last read.
            Some(object) if KINDS.contains(&object.kind.as_str()) => {
                self.objects.retain(|o| {
                    (&o.kind, &o.namespace, &o.name)
                        != (&object.kind, &object.namespace, &object.name)
                });
                self.objects.push(object);
            }
            Some(object) => *self.skipped.entry(object.kind).or_default() += 1,
            None => self.notes.push(format!(
                "{origin}: skipped: not an object with a kind and a name"
            )),
        }
    }

    /// The notes, and one line for the kinds skipped.
    pub fn all_notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        if !self.skipped.is_empty() {
            let kinds: Vec<String> = self
                .skipped
                .iter()
                .map(|(kind, n)| {
                    if *n == 1 {
                        kind.clone()
                    } else {
                        format!("{kind} ({n})")
                    }
                })
                .collect();
            notes.push(format!(
                "skipped, as no check reads them: {}",
                kinds.join(", ")
            ));
        }
        notes
    }

    /// The objects of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> {
        self.objects.iter().filter(move |o| o.kind == kind)
    }

    /// The object of this kind, namespace and name.
    pub fn find(&self, kind: &str, namespace: &str, name: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.namespace == namespace && o.name == name)
    }
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects these labels.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |key: &str| labels.get(key).and_then(Value::as_str);
    let mut any_rule = false;
    if let Some(Value::Object(wanted)) = selector.get("matchLabels") {
        for (key, value) in wanted {
            any_rule = true;
            if label(key) != value.as_str() {
                return false;
            }
        }
    }
    if let Some(Value::Array(expressions)) = selector.get("matchExpressions") {
        for expression in expressions {
            any_rule = true;
            let key = expression.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = expression
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let ok = match expression.get("operator").and_then(Value::as_str) {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    // An empty selector selects everything (PodDisruptionBudget, policy/v1).
    any_rule || selector.is_object()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_documents_and_unknown_kinds() {
        let mut objects = Objects::default();
        objects
            .add_yaml(
                "dump.yaml",
                "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: n1}}\n\
                 - {kind: Widget, metadata: {name: w}}\n---\n\
                 {apiVersion: apps/v1, kind: DeploymentList, items: [{metadata: {name: coredns, namespace: kube-system}}]}\n\
                 ---\n# only a comment\n---\n- 1\n- 2\n",
            )
            .unwrap();
        let labels: Vec<String> = objects.objects.iter().map(Object::label).collect();
        assert_eq!(labels, ["Node n1", "Deployment kube-system/coredns"]);
        assert_eq!(objects.objects[1].tree["apiVersion"], "apps/v1");
        assert_eq!(objects.skipped.get("Widget"), Some(&1));
        let notes = objects.all_notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("document 4"),
            "the list of numbers: {notes:?}"
        );
        assert!(notes[1].contains("Widget"));
        let err = objects
            .add_yaml("bad.yaml", "kind: Pod\n---\nmetadata: [unclosed\n")
            .unwrap_err();
        // The parser stops where the unclosed list should have ended.
        assert!(matches!(err, InputError::Yaml { line: 4, .. }), "{err}");
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = json!({"k8s-app": "kube-dns", "tier": "dns"});
        assert!(selects(
            &json!({"matchLabels": {"k8s-app": "kube-dns"}}),
            &labels
        ));
        assert!(!selects(
            &json!({"matchLabels": {"k8s-app": "other"}}),
            &labels
        ));
        assert!(selects(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["dns"]}]}),
            &labels
        ));
        assert!(!selects(
            &json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert!(selects(&json!({}), &labels));
        assert!(!selects(&Value::Null, &labels));
    }
}
