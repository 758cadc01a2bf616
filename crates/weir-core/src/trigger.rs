//! Event-driven jobs: rules that turn an incoming CloudEvent into a job spec.
//!
//! A rule matches on the event `type` and names a template (or steps) and the job's
//! namespace and name. Template params and step configs may take values from the event: a
//! string written `$data.path.to.field` is replaced by that field of the event's data (any
//! JSON value), and `$id`, `$source`, `$subject`, `$type`, `$time` by the attribute.
//!
//! The job's run id is derived from the event's (source, id) — unique per the CloudEvents
//! spec — so the same event delivered twice names the same job and starts nothing new.
//!
//! ```yaml
//! rules:
//!   - name: archive-arrived
//!     on: dev.weir.file.discovered
//!     namespace: files
//!     job_name: ingest-archive
//!     template: bulk_file
//!     params: { path: $data.path }
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::events::CloudEvent;
use crate::spec::{JobSpec, StepSpec};
use crate::validate::check_name;

/// Label set on every triggered job: the rule's name.
pub const LABEL_RULE: &str = "weir.trigger";
/// Label set on every triggered job: the CloudEvent id that started it.
pub const LABEL_EVENT_ID: &str = "weir.trigger-event";

/// One rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    pub name: String,
    /// The CloudEvent `type` it answers.
    pub on: String,
    #[serde(default)]
    pub namespace: String,
    pub job_name: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub params: Option<Value>,
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The rules of one master, as read from its rules file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRules {
    #[serde(default)]
    pub rules: Vec<TriggerRule>,
}

impl TriggerRules {
    /// Reads a rules file (YAML is a superset of JSON; the caller parses it to a value).
    pub fn from_value(v: Value) -> Result<TriggerRules, String> {
        let rules: TriggerRules = serde_json::from_value(v).map_err(|e| format!("bad trigger rules: {e}"))?;
        let mut names = HashSet::new();
        let mut types = HashSet::new();
        for r in &rules.rules {
            check_name("trigger rule name", &r.name, 64).map_err(|e| e.0)?;
            if !names.insert(r.name.as_str()) {
                return Err(format!("trigger rule {:?} is defined twice", r.name));
            }
            if r.on.is_empty() {
                return Err(format!("trigger rule {:?}: `on` (an event type) is empty", r.name));
            }
            if !types.insert(r.on.as_str()) {
                return Err(format!("trigger rule {:?}: another rule already answers {:?}", r.name, r.on));
            }
            if r.template.is_some() != r.steps.is_empty() {
                return Err(format!("trigger rule {:?}: give either a template or steps", r.name));
            }
        }
        Ok(rules)
    }

    /// Whether any rule exists (no rules: the master does not consume triggers).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The job an event asks for, or why it cannot start one. The spec still goes
    /// through [`crate::validate::validate`] like any submission.
    pub fn job_for(&self, e: &CloudEvent) -> Result<JobSpec, String> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.on == e.ty)
            .ok_or_else(|| format!("no trigger rule for event type {:?}", e.ty))?;
        let params = match &rule.params {
            Some(p) => Some(substitute(p, e).map_err(|m| format!("trigger rule {:?}: {m}", rule.name))?),
            None => None,
        };
        let mut steps = rule.steps.clone();
        for s in &mut steps {
            if let Some(c) = &s.config {
                s.config =
                    Some(substitute(c, e).map_err(|m| format!("trigger rule {:?}: step {}: {m}", rule.name, s.id))?);
            }
        }
        let mut labels = rule.labels.clone();
        labels.insert(LABEL_RULE.into(), rule.name.clone());
        labels.insert(LABEL_EVENT_ID.into(), e.id.chars().take(256).collect());
        Ok(JobSpec {
            namespace: rule.namespace.clone(),
            name: rule.job_name.clone(),
            run_id: run_id(e),
            priority: rule.priority,
            labels,
            template: rule.template.clone(),
            params,
            steps,
            ..Default::default()
        })
    }
}

/// The run id of the job an event starts: a name-based UUID of (source, id).
pub fn run_id(e: &CloudEvent) -> String {
    let name = format!("{}\n{}", e.source, e.id);
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

fn attribute(e: &CloudEvent, path: &str) -> Result<Value, String> {
    let missing = || format!("the event has no {path}");
    let text = |v: &Option<String>| v.clone().map(Value::String).ok_or_else(missing);
    match path {
        "id" => Ok(Value::String(e.id.clone())),
        "source" => Ok(Value::String(e.source.clone())),
        "type" => Ok(Value::String(e.ty.clone())),
        "subject" => text(&e.subject),
        "time" => text(&e.time),
        "data" => e.data.clone().ok_or_else(missing),
        p => {
            let Some(rest) = p.strip_prefix("data.") else {
                return Err(format!("unknown event attribute ${p} (use $id, $source, $type, $subject, $time, $data…)"));
            };
            let mut v = e.data.as_ref().ok_or_else(missing)?;
            for part in rest.split('.') {
                v = match v {
                    Value::Object(m) => m.get(part),
                    Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                }
                .ok_or_else(missing)?;
            }
            Ok(v.clone())
        }
    }
}

fn substitute(v: &Value, e: &CloudEvent) -> Result<Value, String> {
    crate::json::map_strings(v, &|s| match s.strip_prefix('$') {
        Some(path) if !path.is_empty() && !path.starts_with('$') => {
            let found = attribute(e, path)?;
            // What an event carries is data, never a reference to a namespace's
            // connection (whoever can publish an event is not its admin).
            if crate::connection::mentions(&found) {
                return Err(format!("${path} names a connection ({}); an event may not", crate::connection::KEY));
            }
            Ok(Some(found))
        }
        // "$$x" is a literal "$x".
        Some(path) if path.starts_with('$') => Ok(Some(Value::String(path.to_string()))),
        _ => Ok(None),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::validate;

    fn rules() -> TriggerRules {
        TriggerRules::from_value(json!({"rules": [{
            "name": "archive-arrived",
            "on": "dev.weir.file.discovered",
            "namespace": "files",
            "job_name": "ingest-archive",
            "template": "bulk_file",
            "params": {"path": "$data.file.path", "literal": "$$data", "from": "$source"},
        }]}))
        .expect("valid rules")
    }

    fn event(id: &str, data: Value) -> CloudEvent {
        CloudEvent::decode(
            json!({"specversion": "1.0", "id": id, "source": "weir://file-manager", "type": "dev.weir.file.discovered", "data": data})
                .to_string()
                .as_bytes(),
        )
        .expect("event")
    }

    #[test]
    fn an_event_becomes_one_valid_job() {
        let spec = rules().job_for(&event("e-1", json!({"file": {"path": "/in/a.zip"}}))).expect("job");
        assert_eq!((spec.namespace.as_str(), spec.name.as_str()), ("files", "ingest-archive"));
        assert_eq!(spec.params, Some(json!({"path": "/in/a.zip", "literal": "$data", "from": "weir://file-manager"})));
        assert_eq!(spec.labels.get(LABEL_EVENT_ID).map(String::as_str), Some("e-1"));
        let again = rules().job_for(&event("e-1", json!({"file": {"path": "/in/a.zip"}}))).expect("job");
        assert_eq!(spec.run_id, again.run_id, "redelivery names the same job");
        let other = rules().job_for(&event("e-2", json!({"file": {"path": "/in/a.zip"}}))).expect("job");
        assert_ne!(spec.run_id, other.run_id);
        validate(spec).expect("a triggered job validates like any other");
    }

    #[test]
    fn unusable_events_and_rules_are_named() {
        let e = rules().job_for(&event("e-1", json!({"file": {}}))).expect_err("missing field");
        assert!(e.contains("has no data.file.path"), "{e}");
        let mut other = event("e-1", json!({}));
        other.ty = "dev.example.unknown".into();
        assert!(rules().job_for(&other).expect_err("no rule").contains("no trigger rule for event type"));
        let dup = json!({"rules": [
            {"name": "a", "on": "t", "job_name": "j", "template": "standard"},
            {"name": "b", "on": "t", "job_name": "j", "template": "standard"}]});
        assert!(TriggerRules::from_value(dup).expect_err("dup").contains("already answers"));
        let neither = json!({"rules": [{"name": "a", "on": "t", "job_name": "j"}]});
        assert!(TriggerRules::from_value(neither).expect_err("neither").contains("template or steps"));
        let smuggled = rules().job_for(&event("e-1", json!({"file": {"path": {"$connection": "lake"}}})));
        assert!(smuggled.expect_err("a connection from an event").contains("names a connection"));
        let typo = json!({"rules": [{"name": "a", "on": "t", "job_name": "j", "template": "standard", "parms": {}}]});
        assert!(TriggerRules::from_value(typo).expect_err("typo").contains("unknown field `parms`"));
    }
}
