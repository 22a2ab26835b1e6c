//! Which model a pod serves, from its metadata: the rules of the design in a configurable order
//! (first match wins) — an explicit annotation, KServe, Seldon, `app.kubernetes.io/*`, the owning
//! workload. Pure functions over labels, annotations and owner references.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One way of naming a pod's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRule {
    /// The annotations `model_annotation` / `version_annotation` (default `modelmeter.io/model`,
    /// `modelmeter.io/model-version`).
    Annotation,
    /// KServe: label `serving.kserve.io/inferenceservice`.
    Kserve,
    /// Seldon Core: label `seldon-deployment-id`.
    Seldon,
    /// `app.kubernetes.io/name`, version from `app.kubernetes.io/version`.
    AppLabels,
    /// The owning workload: a Deployment (through its ReplicaSet), StatefulSet, DaemonSet or Job.
    Owner,
    /// A standalone rule over the pod's processes (`standalone.rules`), where the API names no
    /// model; never from the pod's metadata.
    Process,
}

impl ModelRule {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelRule::Annotation => "annotation",
            ModelRule::Kserve => "kserve",
            ModelRule::Seldon => "seldon",
            ModelRule::AppLabels => "app_labels",
            ModelRule::Owner => "owner",
            ModelRule::Process => "process",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Rules tried in order; the first that names a model wins. Leave one out to disable it.
    /// Default `[annotation, kserve, seldon, app_labels, owner]`.
    pub rules: Vec<ModelRule>,
    /// Default `modelmeter.io/model`.
    pub model_annotation: String,
    /// Default `modelmeter.io/model-version`.
    pub version_annotation: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            rules: vec![
                ModelRule::Annotation,
                ModelRule::Kserve,
                ModelRule::Seldon,
                ModelRule::AppLabels,
                ModelRule::Owner,
            ],
            model_annotation: "modelmeter.io/model".to_owned(),
            version_annotation: "modelmeter.io/model-version".to_owned(),
        }
    }
}

/// A pod's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    /// Empty when the rule gives no version.
    pub version: String,
    /// The rule that named it.
    pub rule: ModelRule,
}

/// The controller that owns a pod (`metadata.ownerReferences` with `controller: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// The metadata the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub owner: Option<&'a Owner>,
}

/// The first rule that names a model, in `config.rules` order.
pub fn model_of(facts: PodFacts<'_>, config: &ModelConfig) -> Option<Model> {
    config.rules.iter().find_map(|rule| apply(*rule, facts, config))
}

fn non_empty(map: &BTreeMap<String, String>, key: &str) -> Option<String> {
    map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned)
}

fn apply(rule: ModelRule, facts: PodFacts<'_>, config: &ModelConfig) -> Option<Model> {
    let model = |name: String, version: Option<String>| Model { name, version: version.unwrap_or_default(), rule };
    match rule {
        ModelRule::Annotation => non_empty(facts.annotations, &config.model_annotation)
            .map(|name| model(name, non_empty(facts.annotations, &config.version_annotation))),
        ModelRule::Kserve => {
            non_empty(facts.labels, "serving.kserve.io/inferenceservice").map(|name| model(name, None))
        }
        ModelRule::Seldon => non_empty(facts.labels, "seldon-deployment-id").map(|name| model(name, None)),
        ModelRule::AppLabels => non_empty(facts.labels, "app.kubernetes.io/name")
            .map(|name| model(name, non_empty(facts.labels, "app.kubernetes.io/version"))),
        ModelRule::Owner => workload_name(facts.owner?, facts.labels).map(|name| model(name, None)),
        ModelRule::Process => None,
    }
}

/// The workload behind a pod's owner: a ReplicaSet made by a Deployment carries the pod template
/// hash as its name suffix (`<deployment>-<hash>`), which is stripped to give the Deployment.
pub fn workload_name(owner: &Owner, labels: &BTreeMap<String, String>) -> Option<String> {
    if owner.name.is_empty() {
        return None;
    }
    if owner.kind == "ReplicaSet"
        && let Some(hash) = labels.get("pod-template-hash")
        && let Some(deployment) = owner.name.strip_suffix(hash.as_str()).and_then(|s| s.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return Some(deployment.to_owned());
    }
    Some(owner.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn model(labels: &[(&str, &str)], annotations: &[(&str, &str)], owner: Option<(&str, &str)>) -> Option<Model> {
        let owner = owner.map(|(kind, name)| Owner { kind: kind.into(), name: name.into() });
        let (labels, annotations) = (map(labels), map(annotations));
        model_of(
            PodFacts { labels: &labels, annotations: &annotations, owner: owner.as_ref() },
            &ModelConfig::default(),
        )
    }

    #[test]
    fn each_rule_names_a_model() {
        let m = model(&[], &[("modelmeter.io/model", "resnet50"), ("modelmeter.io/model-version", "3")], None).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str(), m.rule), ("resnet50", "3", ModelRule::Annotation));
        let m = model(&[("serving.kserve.io/inferenceservice", "sklearn-iris")], &[], None).unwrap();
        assert_eq!((m.name.as_str(), m.rule), ("sklearn-iris", ModelRule::Kserve));
        let m = model(&[("seldon-deployment-id", "income")], &[], None).unwrap();
        assert_eq!((m.name.as_str(), m.rule), ("income", ModelRule::Seldon));
        let m = model(&[("app.kubernetes.io/name", "bert"), ("app.kubernetes.io/version", "1.2")], &[], None).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str(), m.rule), ("bert", "1.2", ModelRule::AppLabels));
        let m = model(&[("pod-template-hash", "7d9f8c6b5")], &[], Some(("ReplicaSet", "llama-7d9f8c6b5"))).unwrap();
        assert_eq!((m.name.as_str(), m.rule), ("llama", ModelRule::Owner));
        let m = model(&[], &[], Some(("StatefulSet", "triton"))).unwrap();
        assert_eq!(m.name, "triton");
        assert_eq!(model(&[], &[], None), None);
    }

    #[test]
    fn first_rule_wins_and_order_is_configurable() {
        let labels = map(&[("serving.kserve.io/inferenceservice", "isvc"), ("app.kubernetes.io/name", "app")]);
        let annotations = map(&[("modelmeter.io/model", "explicit")]);
        let facts = PodFacts { labels: &labels, annotations: &annotations, owner: None };
        assert_eq!(model_of(facts, &ModelConfig::default()).unwrap().name, "explicit");
        let config = ModelConfig { rules: vec![ModelRule::AppLabels, ModelRule::Kserve], ..ModelConfig::default() };
        assert_eq!(model_of(facts, &config).unwrap().name, "app");
        let config = ModelConfig { rules: vec![], ..ModelConfig::default() };
        assert_eq!(model_of(facts, &config), None);
    }

    #[test]
    fn blank_values_and_odd_owners_do_not_name_models() {
        assert_eq!(model(&[("serving.kserve.io/inferenceservice", "  ")], &[("modelmeter.io/model", "")], None), None);
        // A ReplicaSet without a Deployment's hash suffix is its own workload.
        let m = model(&[("pod-template-hash", "abc")], &[], Some(("ReplicaSet", "standalone"))).unwrap();
        assert_eq!(m.name, "standalone");
        let m = model(&[("pod-template-hash", "abc")], &[], Some(("ReplicaSet", "-abc"))).unwrap();
        assert_eq!(m.name, "-abc");
        assert_eq!(model(&[], &[], Some(("ReplicaSet", ""))), None);
    }
}
