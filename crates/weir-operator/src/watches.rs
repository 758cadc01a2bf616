//! FileWatch objects as the file managers' watches file, free of I/O: each object checked
//! as the file manager will check it, the file of those that pass, and each object's
//! status. `controller` lists the objects and writes the file into a ConfigMap.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::{json, Value};
use weir_core::files::Watches;

use crate::crd::{FileWatch, FileWatchStatus};
use crate::reconcile::{condition, settle};

/// The ConfigMap key the watches file is under (the file managers mount it as
/// `WEIR_WATCHES_FILE`).
pub const FILE_KEY: &str = "watches.yaml";

/// An object's place: namespace and name.
pub type Key = (String, String);

/// The name a FileWatch runs under: `<namespace>.<name>`, unique across namespaces.
pub fn watch_name(obj: &FileWatch) -> String {
    format!("{}.{}", obj.namespace().unwrap_or_else(|| "default".into()), obj.name_any())
}

/// The object as one watch of the watches file, checked as the file manager checks it;
/// the jobs it starts are in the object's namespace.
pub fn watch_of(obj: &FileWatch) -> Result<Value, String> {
    let namespace = obj.namespace().unwrap_or_else(|| "default".into());
    let mut start = obj.spec.start.clone();
    let fields = start.as_object_mut().ok_or("start must be an object (job_name, and steps or template/params)")?;
    match fields.get("namespace") {
        Some(Value::String(n)) if n != &namespace => {
            return Err(format!(
                "start.namespace {n:?} is not the object's namespace {namespace:?}: a FileWatch starts jobs in its own namespace"
            ))
        }
        _ => {
            fields.insert("namespace".into(), namespace.into());
        }
    }
    let mut watch = json!({
        "name": watch_name(obj),
        "location": obj.spec.location,
        "patterns": obj.spec.patterns,
        "start": start,
    });
    if let Some(p) = &obj.spec.poll_interval {
        watch["poll_interval"] = p.clone().into();
    }
    Watches::from_value(json!({ "watches": [watch] }))?;
    Ok(watch)
}

/// The watches file of every object that checks out (those being deleted left out), in
/// name order; and each object's verdict: its watch name, or why it was refused.
pub fn render(objs: &[FileWatch]) -> (String, BTreeMap<Key, Result<String, String>>) {
    let mut watches = BTreeMap::new();
    let mut verdicts = BTreeMap::new();
    for obj in objs.iter().filter(|o| o.metadata.deletion_timestamp.is_none()) {
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        let verdict = watch_of(obj).map(|w| {
            watches.insert(watch_name(obj), w);
            watch_name(obj)
        });
        verdicts.insert(key, verdict);
    }
    let file = json!({ "watches": watches.into_values().collect::<Vec<_>>() });
    let text = serde_yaml_ng::to_string(&file).unwrap_or_default();
    (format!("# Written by weir-operator from the FileWatch objects; do not edit.\n{text}"), verdicts)
}

/// The status `obj` should have after its verdict, at `now`; `where_` names the
/// ConfigMap the file is in.
pub fn status(obj: &FileWatch, verdict: &Result<String, String>, where_: &str, now: &str) -> FileWatchStatus {
    let old = obj.status.clone().unwrap_or_default();
    let (next, decided) = match verdict {
        Ok(name) => (
            FileWatchStatus { watch: Some(name.clone()), message: None, ..old.clone() },
            condition("Accepted", "True", "InWatchesFile", &format!("watch {name} in {where_}"), now),
        ),
        Err(why) => (
            FileWatchStatus { watch: None, message: Some(why.clone()), ..old.clone() },
            condition("Accepted", "False", "Invalid", why, now),
        ),
    };
    FileWatchStatus {
        observed_generation: obj.metadata.generation,
        conditions: settle(&old.conditions, vec![decided], &["Accepted"]),
        ..next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FileWatchSpec;

    fn watch(namespace: &str, name: &str, start: Value) -> FileWatch {
        let mut w = FileWatch::new(
            name,
            FileWatchSpec {
                location: json!({"uri": "file:///data/in"}),
                patterns: vec!["*.csv".into()],
                poll_interval: Some("1m".into()),
                start,
            },
        );
        w.metadata.namespace = Some(namespace.into());
        w.metadata.generation = Some(1);
        w
    }

    fn start() -> Value {
        json!({"job_name": "ingest", "steps": [{"id": "fetch", "kind": "fetch", "queue": "file",
            "config": {"location": "$data.location", "paths": ["$data.path"]}}]})
    }

    fn file(text: &str) -> Watches {
        Watches::from_value(serde_yaml_ng::from_str(text).expect("yaml"))
            .expect("a watches file the file manager reads")
    }

    #[test]
    fn the_file_holds_every_valid_watch_named_by_namespace_in_its_namespace() {
        let objs = [watch("sales", "orders", start()), watch("finance", "orders", start())];
        let (text, verdicts) = render(&objs);
        let w = file(&text);
        let names: Vec<&str> = w.watches.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["finance.orders", "sales.orders"], "sorted, one per namespace");
        assert_eq!(w.watches[1].start["namespace"], "sales");
        assert_eq!(w.watches[1].interval(), std::time::Duration::from_secs(60));
        assert_eq!(verdicts[&("sales".into(), "orders".into())], Ok("sales.orders".to_string()));
        assert_eq!(render(&objs).0, text, "the same objects, the same file");
    }

    #[test]
    fn a_bad_watch_is_left_out_with_its_reason_and_the_others_stay() {
        let mut no_patterns = watch("sales", "empty", start());
        no_patterns.spec.patterns.clear();
        let elsewhere = watch("sales", "elsewhere", json!({"namespace": "finance", "job_name": "x", "steps": []}));
        let mut leaving = watch("sales", "leaving", start());
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        let objs = [watch("sales", "orders", start()), no_patterns, elsewhere, leaving];
        let (text, verdicts) = render(&objs);
        assert_eq!(file(&text).watches.len(), 1);
        let why = |n: &str| verdicts[&("sales".to_string(), n.to_string())].clone().unwrap_err();
        assert!(why("empty").contains("pattern"), "{}", why("empty"));
        assert!(why("elsewhere").contains("its own namespace"), "{}", why("elsewhere"));
        assert!(!verdicts.contains_key(&("sales".to_string(), "leaving".to_string())));

        let s = status(&objs[1], &verdicts[&("sales".into(), "empty".into())], "weir/weir-watches", "t");
        assert_eq!((s.conditions[0].status.as_str(), s.conditions[0].reason.as_str()), ("False", "Invalid"));
        assert_eq!(s.watch, None);
    }

    #[test]
    fn no_watches_is_an_empty_file_not_an_error() {
        let (text, _) = render(&[]);
        assert!(file(&text).watches.is_empty());
    }

    #[test]
    fn an_accepted_watch_keeps_its_condition_time() {
        let mut obj = watch("sales", "orders", start());
        let ok: Result<String, String> = Ok("sales.orders".into());
        let first = status(&obj, &ok, "weir/weir-watches", "t1");
        obj.status = Some(first.clone());
        assert_eq!(status(&obj, &ok, "weir/weir-watches", "t2"), first);
        assert_eq!(first.conditions[0].message, "watch sales.orders in weir/weir-watches");
    }
}
