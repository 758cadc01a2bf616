//! The five built-in workflow templates, each expanded into a DAG of steps routed to the
//! manager queue that will do the work.
//!
//! Steps run [`PLACEHOLDER_KIND`] (`noop`) until their manager's issue gives them real
//! work: the DAG shape and queue routing are real, the work is not, and the README says so.
//! The file templates have theirs: given `params.location`, `bulk_file` and `standard`
//! with `source: file` run the file and batch kinds (see [`file_kinds`]); given
//! `params.api`, `standard` with `source: api`, `secure_api` and `resilient_fetch` (whose
//! `params.job_id` the master turns into `params.api`) run the api and batch kinds
//! ([`api_kinds`]).
//!
//! Parameters (`params`, a JSON object), all optional:
//! - `source`: `"api"` (default) or `"file"`: where the `standard` template collects from.
//! - `parallelism`: 1..=64 (default 4): parallel processing branches of `bulk_file`.
//! - `location`, `patterns` (default `["**/*"]`), `watch`, `format`, `schema`, `rules`,
//!   `sinks`, `max_quarantined_ratio`: the file templates' real work (sinks required).
//! - `api` (a `collect` config), `schema`, `rules`, `sinks`: `standard`'s API work;
//!   with `security`, `classify` and `encryption`, `secure_api`'s; with `key` (and
//!   `job_id`, `fallbacks`, `step`), `resilient_fetch`'s.
//! - `config`: `{ "<step id>": {...} }`: a step's config (merged over the template's).
//! - `kind`: `{ "<step id>": "<kind>" }`: run another kind for a step (for tests and drills).

use serde_json::Value;

use crate::catalog::Queue;
use crate::spec::StepSpec;

/// The kind every template step runs until its manager's issue lands.
pub const PLACEHOLDER_KIND: &str = "noop";

/// Names of the built-in templates.
pub const TEMPLATES: [&str; 5] = ["standard", "secure_api", "bulk_file", "realtime_stream", "resilient_fetch"];

/// Most parallel branches `bulk_file` may fan out to.
pub const MAX_PARALLELISM: u64 = 64;

/// Expands template `name` with `params` into steps, or names what is wrong.
pub fn expand(name: &str, params: Option<&Value>) -> Result<Vec<StepSpec>, String> {
    let empty = Value::Object(Default::default());
    let params = params.unwrap_or(&empty);
    if !params.is_object() {
        return Err(format!("template params must be a JSON object, got {params}"));
    }
    let chain = |steps: &[(&str, Queue)]| -> Vec<(String, Queue, Vec<String>)> {
        steps
            .iter()
            .enumerate()
            .map(|(i, (id, q))| {
                let deps = if i == 0 { vec![] } else { vec![steps[i - 1].0.to_string()] };
                (id.to_string(), *q, deps)
            })
            .collect()
    };
    let shape: Vec<(String, Queue, Vec<String>)> = match name {
        "standard" => {
            let src = match params.get("source").map(|v| v.as_str()) {
                None => Queue::Api,
                Some(Some("api")) => Queue::Api,
                Some(Some("file")) => Queue::File,
                Some(other) => {
                    return Err(format!("standard: params.source must be \"api\" or \"file\", got {other:?}"))
                }
            };
            chain(&[
                ("validate_source", src),
                ("connect", src),
                ("collect", src),
                ("convert", Queue::Batch),
                ("quality", Queue::Batch),
                ("store", Queue::Batch),
            ])
        }
        "secure_api" => chain(&[
            ("security_validation", Queue::Api),
            ("auth_verification", Queue::Api),
            ("encrypted_connection", Queue::Api),
            ("secure_collection", Queue::Api),
            ("classification", Queue::Batch),
            ("encrypted_storage", Queue::Batch),
        ]),
        "bulk_file" => {
            let n = match params.get("parallelism") {
                None => 4,
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=MAX_PARALLELISM).contains(&n) => n,
                    _ => return Err(format!("bulk_file: params.parallelism must be 1..={MAX_PARALLELISM}, got {v}")),
                },
            };
            let mut s = vec![("discovery".to_string(), Queue::File, vec![])];
            let branches: Vec<String> = (1..=n).map(|i| format!("process_{i}")).collect();
            for b in &branches {
                s.push((b.clone(), Queue::File, vec!["discovery".to_string()]));
            }
            s.push(("standardization".into(), Queue::Batch, branches.clone()));
            s.push(("consolidation".into(), Queue::Batch, vec!["standardization".into()]));
            // Validation sees every stage's report: what was fetched, converted and stored.
            let mut checked = branches;
            checked.extend(["standardization".to_string(), "consolidation".to_string()]);
            s.push(("batch_validation".into(), Queue::Batch, checked));
            s
        }
        // With a source: the probe, then one long-running `consume` that processes (converts
        // and types), validates (the rules, per record) and stores (the sinks) each flush.
        "realtime_stream" if params.get("source").is_some() => {
            chain(&[("connect", Queue::Stream), ("stream", Queue::Stream)])
        }
        "realtime_stream" => chain(&[
            ("connect", Queue::Stream),
            ("continuous_processing", Queue::Stream),
            ("realtime_validation", Queue::Stream),
            ("streaming_storage", Queue::Stream),
        ]),
        "resilient_fetch" => vec![
            ("failure_analysis".into(), Queue::Api, vec![]),
            ("recovery_strategy".into(), Queue::Api, vec!["failure_analysis".into()]),
            ("alternative_api".into(), Queue::Api, vec!["recovery_strategy".into()]),
            ("alternative_files".into(), Queue::File, vec!["recovery_strategy".into()]),
            ("reconstruction".into(), Queue::Batch, vec!["alternative_api".into(), "alternative_files".into()]),
            ("validation".into(), Queue::Batch, vec!["reconstruction".into()]),
        ],
        other => return Err(format!("unknown template {other:?} (known: {})", TEMPLATES.join(", "))),
    };
    let real = match file_kinds(name, params)? {
        Some(r) => Some(r),
        None => match api_kinds(name, params)? {
            Some(r) => Some(r),
            None => stream_kinds(name, params),
        },
    };
    let per_step = |key: &str| params.get(key).and_then(Value::as_object);
    for key in ["config", "kind"] {
        if let Some(map) = per_step(key) {
            if let Some(unknown) = map.keys().find(|k| !shape.iter().any(|(id, _, _)| id == *k)) {
                return Err(format!("{name}: params.{key} names unknown step {unknown:?}"));
            }
        }
    }
    shape
        .into_iter()
        .map(|(id, queue, depends_on)| {
            let (real_kind, real_config) = match real.as_ref().and_then(|r| r.iter().find(|(s, _, _)| *s == id)) {
                Some((_, k, c)) => (Some(k.to_string()), c.clone()),
                None => (None, None),
            };
            let kind = match per_step("kind").and_then(|m| m.get(&id)) {
                None => real_kind.unwrap_or_else(|| PLACEHOLDER_KIND.to_string()),
                Some(Value::String(k)) => k.clone(),
                Some(v) => return Err(format!("{name}: params.kind.{id} must be text, got {v}")),
            };
            let config = match (real_config, per_step("config").and_then(|m| m.get(&id)).cloned()) {
                (Some(Value::Object(mut base)), Some(Value::Object(over))) => {
                    base.extend(over);
                    Some(Value::Object(base))
                }
                (base, over) => over.or(base),
            };
            Ok(StepSpec { config, id, kind, queue: queue.as_str().to_string(), depends_on, ..StepSpec::default() })
        })
        .collect()
}

/// The stream config's fields a `realtime_stream` takes from its params.
const STREAM_PARAMS: [&str; 11] = [
    "source",
    "format",
    "schema",
    "rules",
    "sinks",
    "flush",
    "from",
    "until",
    "dead_letter",
    "overflow",
    "dedupe_window",
];

/// `realtime_stream`'s real kinds, when `params.source` is given: `probe` (the source and
/// the sinks answer) and `consume`, both with the stream config made of the params.
fn stream_kinds(name: &str, params: &Value) -> Option<Vec<RealStep>> {
    if name != "realtime_stream" || params.get("source").is_none() {
        return None;
    }
    let config: serde_json::Map<String, Value> =
        STREAM_PARAMS.iter().filter_map(|k| params.get(*k).map(|v| (k.to_string(), v.clone()))).collect();
    let config = Value::Object(config);
    Some(vec![("connect".into(), "probe", Some(config.clone())), ("stream".into(), "consume", Some(config))])
}

/// One template step's real work: (step id, kind, config).
pub type RealStep = (String, &'static str, Option<Value>);

/// The real kinds and configs of the file templates, when `params.location` is given.
/// `None`: the template runs placeholders.
pub fn file_kinds(name: &str, params: &Value) -> Result<Option<Vec<RealStep>>, String> {
    let Some(location) = params.get("location") else { return Ok(None) };
    let is_file_standard = name == "standard" && params.get("source").and_then(Value::as_str) == Some("file");
    if name != "bulk_file" && !is_file_standard {
        return Err(format!("{name}: params.location applies to bulk_file and to standard with source \"file\""));
    }
    let sinks = params
        .get("sinks")
        .cloned()
        .ok_or_else(|| format!("{name}: params.sinks is required with params.location (where the rows land)"))?;
    let patterns = params.get("patterns").cloned().unwrap_or_else(|| serde_json::json!(["**/*"]));
    let mut discover = serde_json::json!({"location": location, "patterns": patterns});
    if let Some(w) = params.get("watch") {
        discover["watch"] = w.clone();
    }
    let mut convert = serde_json::Map::new();
    for k in ["format", "schema", "rules"] {
        if let Some(v) = params.get(k) {
            convert.insert(k.into(), v.clone());
        }
    }
    let store = serde_json::json!({"sinks": sinks});
    let mut out: Vec<RealStep> = Vec::new();
    if name == "bulk_file" {
        let n = params.get("parallelism").and_then(Value::as_u64).unwrap_or(4);
        out.push(("discovery".into(), "discover", Some(discover)));
        for i in 1..=n {
            out.push((format!("process_{i}"), "fetch", Some(serde_json::json!({"shard": {"index": i - 1, "of": n}}))));
        }
        out.push(("standardization".into(), "convert", Some(Value::Object(convert))));
        out.push(("consolidation".into(), "store", Some(store)));
        let mut rec = serde_json::json!({});
        if let Some(r) = params.get("max_quarantined_ratio") {
            rec["max_quarantined_ratio"] = r.clone();
        }
        out.push(("batch_validation".into(), "reconcile", Some(rec)));
    } else {
        let rules = params.get("rules").cloned().unwrap_or_else(|| serde_json::json!({}));
        convert.remove("rules");
        // The master checked the configs at submission; this checks the source answers.
        out.push(("validate_source".into(), "probe", Some(serde_json::json!({"location": location}))));
        out.push(("connect".into(), "discover", Some(discover)));
        out.push(("collect".into(), "fetch", Some(serde_json::json!({}))));
        out.push(("convert".into(), "convert", Some(Value::Object(convert))));
        out.push(("quality".into(), "quality", Some(serde_json::json!({"rules": rules}))));
        out.push(("store".into(), "store", Some(store)));
    }
    Ok(Some(out))
}

/// The real kinds and configs of the API templates, when `params.api` (a `collect`
/// config: the resource, its auth, paginator, records…) is given. `standard` with
/// `source: "api"`: `probe`, `connect`, `collect`, then the batch kinds. `secure_api`
/// ([`secure_api_kinds`]): the same resource under a security policy, classified and
/// stored encrypted. `None`: the template runs placeholders.
pub fn api_kinds(name: &str, params: &Value) -> Result<Option<Vec<RealStep>>, String> {
    let Some(resource) = params.get("api") else { return Ok(None) };
    let is_api_standard = name == "standard" && params.get("source").and_then(Value::as_str).unwrap_or("api") == "api";
    if !(is_api_standard || name == "secure_api" || name == "resilient_fetch") {
        return Err(format!(
            "{name}: params.api applies to standard with source \"api\", secure_api and resilient_fetch"
        ));
    }
    let Some(obj) = resource.as_object() else {
        return Err(format!("{name}: params.api must be a collect config (an object), got {resource}"));
    };
    match name {
        "secure_api" => return secure_api_kinds(obj, params).map(Some),
        "resilient_fetch" => return recovery_kinds(resource, params).map(Some),
        _ => {}
    }
    let sinks = params
        .get("sinks")
        .cloned()
        .ok_or_else(|| format!("{name}: params.sinks is required with params.api (where the rows land)"))?;
    let mut convert = serde_json::Map::new();
    if let Some(v) = params.get("schema") {
        convert.insert("schema".into(), v.clone());
    }
    let rules = params.get("rules").cloned().unwrap_or_else(|| serde_json::json!({}));
    Ok(Some(vec![
        ("validate_source".into(), "probe", Some(resource.clone())),
        ("connect".into(), "connect", Some(resource.clone())),
        ("collect".into(), "collect", Some(resource.clone())),
        ("convert".into(), "convert", Some(Value::Object(convert))),
        ("quality".into(), "quality", Some(serde_json::json!({"rules": rules}))),
        ("store".into(), "store", Some(serde_json::json!({"sinks": sinks}))),
    ]))
}

/// `secure_api`'s real work. `params.security` (default: HTTPS only, the step's own
/// hosts, TLS 1.2+) becomes the resource's `security`; `check_security` checks the
/// policy and its CA, `probe` the credentials against the API, `check_tls` the
/// connection each host really offers, `collect` collects under the policy, `classify`
/// labels (masks, hashes) personal data (`params.classify`, `params.schema`), and
/// `store` writes it encrypted: every Parquet sink takes `params.encryption` unless it
/// has its own, and one without either is refused.
fn secure_api_kinds(resource: &serde_json::Map<String, Value>, params: &Value) -> Result<Vec<RealStep>, String> {
    let mut resource = resource.clone();
    match (params.get("security"), resource.get("security")) {
        (Some(_), Some(_)) => {
            return Err("secure_api: give the policy once, in params.security or in params.api.security".into())
        }
        (Some(p), None) => {
            resource.insert("security".into(), p.clone());
        }
        (None, None) => {
            resource.insert("security".into(), serde_json::json!({}));
        }
        (None, Some(_)) => {}
    }
    let resource = Value::Object(resource);
    let Some(Value::Array(sinks)) = params.get("sinks") else {
        return Err("secure_api: params.sinks is required with params.api (a list: where the rows land)".into());
    };
    let mut sinks = sinks.clone();
    for (i, s) in sinks.iter_mut().enumerate() {
        if s.get("type").and_then(Value::as_str) != Some("parquet") {
            continue;
        }
        let Some(sink) = s.as_object_mut() else { continue };
        match (sink.contains_key("encryption"), params.get("encryption")) {
            (true, _) => {}
            (false, Some(e)) => {
                sink.insert("encryption".into(), e.clone());
            }
            (false, None) => {
                return Err(format!(
                    "secure_api: params.sinks[{i}] is a Parquet sink without encryption: give params.encryption (a key by reference, e.g. {{\"key\": {{\"env\": \"LAKE_KEY\"}}}}) or the sink's own"
                ))
            }
        }
    }
    let mut classify = serde_json::Map::new();
    classify.insert("classify".into(), params.get("classify").cloned().unwrap_or_else(|| serde_json::json!({})));
    if let Some(v) = params.get("schema") {
        classify.insert("schema".into(), v.clone());
    }
    let mut store = serde_json::json!({"sinks": sinks});
    if let Some(r) = params.get("rules") {
        store["rules"] = r.clone();
    }
    Ok(vec![
        ("security_validation".into(), "check_security", Some(resource.clone())),
        ("auth_verification".into(), "probe", Some(resource.clone())),
        ("encrypted_connection".into(), "check_tls", Some(resource.clone())),
        ("secure_collection".into(), "collect", Some(resource)),
        ("classification".into(), "classify", Some(Value::Object(classify))),
        ("encrypted_storage".into(), "store", Some(store)),
    ])
}

/// `resilient_fetch`'s real work, given the resource (`params.api`, bound from the failed
/// job `params.job_id` at submission, see [`crate::api::recovery::bind_failed_job`]),
/// `params.key` and `params.sinks`: `analyze_failure` finds what the failed job fetched and
/// stored, `plan_recovery` picks the source that answers, `recover` fetches what is
/// missing from an API source and `recover_files` from the resource's files fallback (each
/// only when chosen), `store` merges it into the sinks writing each key once (`dedupe`),
/// and `reconcile` checks every row is accounted for and every key is held once.
fn recovery_kinds(resource: &Value, params: &Value) -> Result<Vec<RealStep>, String> {
    let key = match params.get("key") {
        Some(Value::Array(k)) if !k.is_empty() && k.iter().all(Value::is_string) => Value::Array(k.clone()),
        Some(Value::String(k)) => serde_json::json!([k]),
        _ => {
            return Err(
                "resilient_fetch: params.key must name the column(s) that identify a record, e.g. [\"id\"]".into()
            )
        }
    };
    let sinks = params
        .get("sinks")
        .cloned()
        .ok_or("resilient_fetch: params.sinks is required with params.api (where the recovered rows land)")?;
    let mut rec = serde_json::json!({"resource": resource, "key": key});
    if let Some(f) = params.get("failed") {
        rec["failed"] = f.clone();
    }
    Ok(vec![
        ("failure_analysis".into(), "analyze_failure", Some(rec.clone())),
        ("recovery_strategy".into(), "plan_recovery", Some(rec.clone())),
        ("alternative_api".into(), "recover", Some(rec.clone())),
        ("alternative_files".into(), "recover_files", Some(rec)),
        ("reconstruction".into(), "store", Some(serde_json::json!({"sinks": sinks, "dedupe": {"key": key}}))),
        ("validation".into(), "reconcile", Some(serde_json::json!({"key": key, "sinks": sinks}))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_template_expands_and_routes() {
        for t in TEMPLATES {
            let steps = expand(t, None).expect(t);
            assert!(steps.len() >= 4, "{t}");
            assert!(steps[0].depends_on.is_empty());
        }
        let bulk = expand("bulk_file", Some(&json!({"parallelism": 3}))).expect("bulk");
        let std_steps: Vec<_> = bulk.iter().map(|s| (s.id.as_str(), s.queue.as_str())).collect();
        assert_eq!(
            std_steps,
            vec![
                ("discovery", "file"),
                ("process_1", "file"),
                ("process_2", "file"),
                ("process_3", "file"),
                ("standardization", "batch"),
                ("consolidation", "batch"),
                ("batch_validation", "batch")
            ]
        );
        assert_eq!(bulk[4].depends_on, vec!["process_1", "process_2", "process_3"]);
        assert_eq!(bulk[6].depends_on, vec!["process_1", "process_2", "process_3", "standardization", "consolidation"]);
        let stream = expand("realtime_stream", None).expect("stream");
        assert!(stream.iter().all(|s| s.queue == "stream"));
        let p = json!({"source": {"type": "nats", "servers": "nats://n:4222", "stream": "S", "consumer": "c"},
                       "sinks": [{"type": "parquet", "path": "/lake"}], "rules": {"not_null": ["id"]}, "until": "now"});
        let real = expand("realtime_stream", Some(&p)).expect("stream");
        let kinds: Vec<(&str, &str, Vec<String>)> =
            real.iter().map(|s| (s.id.as_str(), s.kind.as_str(), s.depends_on.clone())).collect();
        assert_eq!(kinds, vec![("connect", "probe", vec![]), ("stream", "consume", vec!["connect".to_string()])]);
        assert_eq!(real[1].config.as_ref().map(|c| c["rules"].clone()), Some(json!({"not_null": ["id"]})));
        let std_file = expand("standard", Some(&json!({"source": "file"}))).expect("std");
        assert_eq!(std_file[2].queue, "file");
        assert_eq!(std_file[3].queue, "batch");
    }

    #[test]
    fn file_templates_run_real_kinds_given_a_location() {
        let p = json!({"location": {"uri": "s3://b/in"}, "patterns": ["*.csv"], "parallelism": 2,
                       "sinks": [{"type": "parquet", "path": "/lake"}], "rules": {"not_null": ["id"]},
                       "config": {"consolidation": {"batch_rows": 1000}}});
        let steps = expand("bulk_file", Some(&p)).expect("bulk");
        let kinds: Vec<(&str, &str)> = steps.iter().map(|s| (s.id.as_str(), s.kind.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                ("discovery", "discover"),
                ("process_1", "fetch"),
                ("process_2", "fetch"),
                ("standardization", "convert"),
                ("consolidation", "store"),
                ("batch_validation", "reconcile")
            ]
        );
        assert_eq!(steps[2].config.as_ref().expect("cfg")["shard"], json!({"index": 1, "of": 2}));
        assert_eq!(steps[3].config.as_ref().expect("cfg")["rules"], json!({"not_null": ["id"]}));
        let store = steps[4].config.as_ref().expect("cfg");
        assert_eq!((store["batch_rows"].clone(), store["sinks"][0]["path"].clone()), (json!(1000), json!("/lake")));
        let std_file = expand(
            "standard",
            Some(&json!({"source": "file", "location": {"uri": "file:///in"},
                                                        "sinks": [{"type": "parquet", "path": "/lake"}]})),
        )
        .expect("standard");
        assert_eq!(std_file[0].config, Some(json!({"location": {"uri": "file:///in"}})));
        assert_eq!(
            std_file.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(),
            vec!["probe", "discover", "fetch", "convert", "quality", "store"]
        );
        assert!(expand("bulk_file", Some(&json!({"location": {"uri": "file:///in"}}))).unwrap_err().contains("sinks"));
        assert!(expand("standard", Some(&json!({"location": {"uri": "file:///in"}, "sinks": []})))
            .unwrap_err()
            .contains("source"));
        let resource = json!({"api": "shop", "base_url": "https://api.shop.test", "path": "/orders"});
        let std_api =
            expand("standard", Some(&json!({"api": resource, "sinks": [{"type": "parquet", "path": "/lake"}]})))
                .expect("standard api");
        assert_eq!(
            std_api.iter().map(|s| (s.kind.as_str(), s.queue.as_str())).collect::<Vec<_>>(),
            vec![
                ("probe", "api"),
                ("connect", "api"),
                ("collect", "api"),
                ("convert", "batch"),
                ("quality", "batch"),
                ("store", "batch")
            ]
        );
        assert_eq!(std_api[2].config.as_ref(), Some(&resource));
        assert!(expand("standard", Some(&json!({"api": resource}))).unwrap_err().contains("params.sinks"));
        assert!(expand("bulk_file", Some(&json!({"api": resource, "sinks": []}))).unwrap_err().contains("params.api"));
    }

    #[test]
    fn secure_api_runs_checks_collection_classification_and_encrypted_storage() {
        let resource = json!({"api": "shop", "base_url": "https://api.shop.test", "path": "/customers"});
        let key = json!({"key": {"env": "LAKE_KEY"}});
        let p = json!({"api": resource, "security": {"min_tls": "1.3"}, "encryption": key,
                       "classify": {"actions": {"card": "mask"}},
                       "sinks": [{"type": "parquet", "path": "/lake/customers"},
                                 {"type": "parquet", "path": "/lake/b", "encryption": {"key": {"file": "/k"}}}]});
        let steps = expand("secure_api", Some(&p)).expect("secure_api");
        assert_eq!(
            steps.iter().map(|s| (s.kind.as_str(), s.queue.as_str())).collect::<Vec<_>>(),
            vec![
                ("check_security", "api"),
                ("probe", "api"),
                ("check_tls", "api"),
                ("collect", "api"),
                ("classify", "batch"),
                ("store", "batch")
            ]
        );
        let collect = steps[3].config.as_ref().expect("cfg");
        assert_eq!(collect["security"], json!({"min_tls": "1.3"}));
        assert_eq!(steps[4].config.as_ref().expect("cfg")["classify"]["actions"]["card"], "mask");
        let store = steps[5].config.as_ref().expect("cfg");
        assert_eq!(store["sinks"][0]["encryption"], key);
        assert_eq!(store["sinks"][1]["encryption"]["key"], json!({"file": "/k"}));
        // No key for a Parquet sink: refused, naming what to give.
        let mut no_key = p.clone();
        no_key.as_object_mut().expect("obj").remove("encryption");
        assert!(expand("secure_api", Some(&no_key)).unwrap_err().contains("params.sinks[0]"));
        // The default policy when none is given.
        let plain = json!({"api": resource, "encryption": key, "sinks": [{"type": "parquet", "path": "/l"}]});
        assert_eq!(
            expand("secure_api", Some(&plain)).expect("ok")[0].config.as_ref().expect("c")["security"],
            json!({})
        );
    }

    #[test]
    fn resilient_fetch_analyses_plans_recovers_merges_by_key_and_validates() {
        let resource = json!({"api": "shop", "base_url": "https://api.shop.test", "path": "/orders"});
        let sinks = json!([{"type": "parquet", "path": "/lake/orders"}]);
        let steps =
            expand("resilient_fetch", Some(&json!({"api": resource, "key": "id", "sinks": sinks}))).expect("ok");
        assert_eq!(
            steps.iter().map(|s| (s.kind.as_str(), s.queue.as_str())).collect::<Vec<_>>(),
            vec![
                ("analyze_failure", "api"),
                ("plan_recovery", "api"),
                ("recover", "api"),
                ("recover_files", "file"),
                ("store", "batch"),
                ("reconcile", "batch")
            ]
        );
        assert_eq!(steps[2].config.as_ref().expect("cfg")["key"], json!(["id"]));
        assert_eq!(steps[4].config.as_ref().expect("cfg")["dedupe"], json!({"key": ["id"]}));
        assert_eq!(steps[5].config.as_ref().expect("cfg")["sinks"], sinks);
        assert!(expand("resilient_fetch", Some(&json!({"api": resource, "sinks": sinks})))
            .unwrap_err()
            .contains("key"));
        assert!(expand("resilient_fetch", Some(&json!({"api": resource, "key": ["id"]})))
            .unwrap_err()
            .contains("sinks"));
    }

    #[test]
    fn bad_params_are_named() {
        assert!(expand("nope", None).unwrap_err().contains("unknown template"));
        assert!(expand("bulk_file", Some(&json!({"parallelism": 0}))).unwrap_err().contains("parallelism"));
        assert!(expand("standard", Some(&json!({"source": "ftp"}))).unwrap_err().contains("source"));
        assert!(expand("standard", Some(&json!([1]))).unwrap_err().contains("object"));
        assert!(expand("standard", Some(&json!({"config": {"bogus": {}}}))).unwrap_err().contains("bogus"));
        let s =
            expand("standard", Some(&json!({"kind": {"store": "fail"}, "config": {"store": {"retryable": false}}})))
                .expect("overrides");
        assert_eq!(s[5].kind, "fail");
        assert_eq!(s[5].config, Some(json!({"retryable": false})));
    }
}
