//! Helpers shared by the tests that read Kubernetes YAML (`inject.rs`,
//! `webhook_manifests.rs`).

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_norway::Value;

/// The documents of a YAML stream, empty ones left out.
pub(crate) fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Deserializes `doc` as `T` and checks that nothing was lost on the way: a field the typed
/// object does not know (a typo, a field at the wrong level) would be missing on the way back.
pub(crate) fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let object: T = serde_norway::from_value(doc.clone()).unwrap();
    assert_eq!(
        &serde_norway::to_value(&object).unwrap(),
        doc,
        "the typed round trip changed the document"
    );
    object
}

/// A document's kind.
pub(crate) fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap()
}

/// A document's `metadata.name`.
pub(crate) fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap()
}
