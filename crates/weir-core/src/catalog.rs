//! The queues Weir routes work to (one per manager) and the step kinds each accepts.
//!
//! This is the one place that says which kinds exist. Until the managers' own issues land,
//! every queue runs only the generic kinds below, which exist to prove the engine:
//!
//! | kind    | config                                              | does |
//! |---------|-----------------------------------------------------|------|
//! | `noop`  | none                                                | succeeds at once, output `{}` |
//! | `sleep` | `{"duration": "2s"}`                                | waits, heartbeating, then succeeds |
//! | `fail`  | `{"message": "...", "error_kind": "...", "retryable": true, "attempts": N}` | fails; with `attempts` it fails only the first N attempts |
//!
//! The file queue also runs `probe`, `discover`, `fetch` and `archive` ([`crate::files`]);
//! the batch queue the data kinds `convert`, `quality`, `store`, `classify` ([`crate::dataset`]) and
//! `reconcile`; the api queue `collect`, `probe`, `connect`, `check_security` and
//! `check_tls` ([`crate::api`]). The table
//! of kinds is `KINDS`: for each, how its config is checked ([`check_kind`]) and what it
//! reaches outside the platform ([`step_reach`], for [`crate::sandbox`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use crate::sandbox::Reach;

/// A work queue; each is served by one manager service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    /// API manager: HTTP pulls.
    Api,
    /// File manager: discovery and transfer.
    File,
    /// Batch manager: conversion, quality, sinks.
    Batch,
    /// Stream manager: stream consumers.
    Stream,
}

impl Queue {
    /// Every queue, in a stable order.
    pub const ALL: [Queue; 4] = [Queue::Api, Queue::File, Queue::Batch, Queue::Stream];

    /// The name used in specs, the wire and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Api => "api",
            Queue::File => "file",
            Queue::Batch => "batch",
            Queue::Stream => "stream",
        }
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Queue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Queue::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| format!("unknown queue {s:?} (known: api, file, batch, stream)"))
    }
}

/// Step kinds every queue runs (engine plumbing, not ingestion).
pub const GENERIC_KINDS: [&str; 3] = ["noop", "sleep", "fail"];

/// The data kinds the batch queue runs (config: [`crate::dataset::DataStep`]).
pub const BATCH_KINDS: [&str; 4] = ["convert", "quality", "store", "classify"];

/// The file kinds the file queue runs (configs: [`crate::files`]).
pub const FILE_KINDS: [&str; 4] = ["probe", "discover", "fetch", "archive"];

/// The kinds the api queue runs (config: [`crate::api::CollectStep`]).
pub const API_KINDS: [&str; 5] = ["collect", "probe", "connect", "check_security", "check_tls"];

/// The kinds the stream queue runs (config: [`crate::stream::StreamStep`]): `consume`, and
/// `probe` (the source and the sinks answer; the lanes and where the sinks stand).
pub const STREAM_KINDS: [&str; 2] = ["consume", "probe"];

/// The recovery kinds of `resilient_fetch` (config: [`crate::api::recovery::RecoveryStep`]).
pub const RECOVERY_KINDS: [&str; 3] = ["analyze_failure", "plan_recovery", "recover"];

/// A step kind: the queues that run it, and how its config is read at submission —
/// checked, and what it reaches outside the platform found (for the sandbox).
struct Kind {
    name: &'static str,
    queues: &'static [Queue],
    reach: fn(&str, Option<&Value>) -> Result<Reach, String>,
}

/// Every kind Weir knows, in one place: a manager's new kind is one line here and its
/// config's own module.
const KINDS: &[Kind] = &[
    Kind { name: "noop", queues: &Queue::ALL, reach: nothing },
    Kind { name: "sleep", queues: &Queue::ALL, reach: |_, c| sleep_duration(c).map(|_| Reach::default()) },
    Kind { name: "fail", queues: &Queue::ALL, reach: |_, c| fail_config(c).map(|_| Reach::default()) },
    Kind { name: "convert", queues: &[Queue::Batch], reach: data_reach },
    Kind { name: "quality", queues: &[Queue::Batch], reach: data_reach },
    Kind { name: "store", queues: &[Queue::Batch], reach: data_reach },
    Kind { name: "classify", queues: &[Queue::Batch], reach: data_reach },
    Kind {
        name: "reconcile",
        queues: &[Queue::Batch],
        reach: |_, c| crate::dataset::ReconcileStep::parse(c).map(|s| s.reach()),
    },
    Kind { name: "probe", queues: &[Queue::File], reach: |_, c| crate::files::ProbeStep::parse(c).map(|s| s.reach()) },
    Kind {
        name: "discover",
        queues: &[Queue::File],
        reach: |_, c| crate::files::DiscoverStep::parse(c).map(|s| s.reach()),
    },
    Kind { name: "fetch", queues: &[Queue::File], reach: |_, c| crate::files::FetchStep::parse(c).map(|s| s.reach()) },
    Kind {
        name: "archive",
        queues: &[Queue::File],
        reach: |_, c| crate::files::ArchiveStep::parse(c).map(|s| s.reach()),
    },
    Kind { name: "collect", queues: &[Queue::Api], reach: resource_reach },
    Kind { name: "probe", queues: &[Queue::Api], reach: resource_reach },
    Kind { name: "connect", queues: &[Queue::Api], reach: resource_reach },
    Kind { name: "check_security", queues: &[Queue::Api], reach: resource_reach },
    Kind { name: "check_tls", queues: &[Queue::Api], reach: resource_reach },
    Kind { name: "consume", queues: &[Queue::Stream], reach: stream_reach },
    Kind { name: "probe", queues: &[Queue::Stream], reach: stream_reach },
    Kind { name: "analyze_failure", queues: &[Queue::Api], reach: recovery_reach },
    Kind { name: "plan_recovery", queues: &[Queue::Api], reach: recovery_reach },
    Kind { name: "recover", queues: &[Queue::Api], reach: recovery_reach },
    Kind { name: "recover_files", queues: &[Queue::File], reach: recovery_reach },
];

fn nothing(_: &str, _: Option<&Value>) -> Result<Reach, String> {
    Ok(Reach::default())
}

fn data_reach(kind: &str, config: Option<&Value>) -> Result<Reach, String> {
    crate::dataset::DataStep::parse(kind, config).map(|s| s.reach())
}

fn resource_reach(_: &str, config: Option<&Value>) -> Result<Reach, String> {
    crate::api::CollectStep::parse(config).map(|s| s.reach())
}

fn stream_reach(_: &str, config: Option<&Value>) -> Result<Reach, String> {
    crate::stream::StreamStep::parse_served(config).map(|s| s.reach())
}

fn recovery_reach(_: &str, config: Option<&Value>) -> Result<Reach, String> {
    crate::api::recovery::RecoveryStep::parse(config).map(|s| s.reach())
}

/// The kinds a queue accepts.
pub fn kinds_for(queue: Queue) -> Vec<&'static str> {
    KINDS.iter().filter(|k| k.queues.contains(&queue)).map(|k| k.name).collect()
}

/// Longest `sleep` a step may ask for.
pub const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);

/// At submission, before the step is checked: fills what its config takes from the job
/// (collect's `{params.…}` placeholders) and checks what it names of the job (collect's
/// parent step, which must be among its dependencies).
pub fn bind_to_job(step: &mut crate::spec::StepSpec, params: Option<&Value>) -> Result<(), String> {
    if step.queue != Queue::Api.as_str() || !API_KINDS.contains(&step.kind.as_str()) {
        return Ok(());
    }
    if let Some(c) = step.config.as_mut() {
        crate::api::bind_params(c, params)?;
        if let Some(parent) = c.get("parent").and_then(|p| p.get("step")).and_then(Value::as_str) {
            if !step.depends_on.iter().any(|d| d == parent) {
                return Err(format!("parent.step {parent:?} must be among depends_on (its records come from there)"));
            }
        }
    }
    Ok(())
}

/// Checks that `kind` runs on `queue` and that `config` suits it; the error names the problem.
pub fn check_kind(kind: &str, queue: Queue, config: Option<&Value>) -> Result<(), String> {
    step_reach(kind, queue, config).map(|_| ())
}

/// What a step of `kind` on `queue` reaches outside the platform (local paths, remote
/// endpoints), read from its config, for [`crate::sandbox::Policy::check`]; the config
/// is checked as at submission (give it bound, as [`bind_to_job`] leaves it).
pub fn step_reach(kind: &str, queue: Queue, config: Option<&Value>) -> Result<Reach, String> {
    match KINDS.iter().find(|k| k.name == kind && k.queues.contains(&queue)) {
        Some(k) => (k.reach)(kind, config),
        None => Err(format!("unknown kind {kind:?} for queue {queue} (known: {})", kinds_for(queue).join(", "))),
    }
}

/// The duration of a `sleep` step.
pub fn sleep_duration(config: Option<&Value>) -> Result<Duration, String> {
    let d = match config.and_then(|c| c.get("duration")) {
        None => return Err("sleep needs config.duration, e.g. \"2s\"".into()),
        Some(Value::String(s)) => crate::duration::parse(s)?,
        Some(Value::Number(n)) => crate::duration::parse(&n.to_string())?,
        Some(other) => return Err(format!("sleep config.duration must be text like \"2s\", got {other}")),
    };
    if d > MAX_SLEEP {
        return Err(format!("sleep config.duration {} exceeds 24h", crate::duration::format(d)));
    }
    Ok(d)
}

/// What a `fail` step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct FailConfig {
    /// Error message reported.
    pub message: String,
    /// Error kind reported (default "injected").
    pub error_kind: String,
    /// Whether the failure may be retried (default true).
    pub retryable: bool,
    /// Fail only the first N attempts, then succeed (default: always fail).
    pub attempts: Option<u32>,
}

/// Reads a `fail` step's config.
pub fn fail_config(config: Option<&Value>) -> Result<FailConfig, String> {
    let get = |k: &str| config.and_then(|c| c.get(k));
    let text = |k: &str, default: &str| -> Result<String, String> {
        match get(k) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!("fail config.{k} must be text, got {v}")),
        }
    };
    let retryable = match get("retryable") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(format!("fail config.retryable must be true or false, got {v}")),
    };
    let attempts = match get("attempts") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("fail config.attempts must be a whole number, got {v}"))?,
        ),
    };
    let error_kind = text("error_kind", "injected")?;
    crate::validate::check_name("fail config.error_kind", &error_kind, 64).map_err(|e| e.0)?;
    Ok(FailConfig { message: text("message", "injected failure")?, error_kind, retryable, attempts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queues_round_trip_and_unknown_is_named() {
        for q in Queue::ALL {
            assert_eq!(q.as_str().parse::<Queue>(), Ok(q));
        }
        assert!("ftp".parse::<Queue>().unwrap_err().contains("\"ftp\""));
    }

    #[test]
    fn kinds_are_checked_with_their_config() {
        assert!(check_kind("noop", Queue::Api, None).is_ok());
        assert!(check_kind("teleport", Queue::Api, None).unwrap_err().contains("teleport"));
        assert!(check_kind("sleep", Queue::File, None).unwrap_err().contains("duration"));
        assert!(check_kind("sleep", Queue::File, Some(&json!({"duration": "2s"}))).is_ok());
        assert!(check_kind("sleep", Queue::File, Some(&json!({"duration": "48h"}))).is_err());
        assert!(check_kind("fail", Queue::Batch, Some(&json!({"retryable": "no"}))).is_err());
        assert!(check_kind("fail", Queue::Batch, Some(&json!({"error_kind": "no spaces"}))).is_err());
        assert!(check_kind("convert", Queue::Batch, None).is_ok());
        assert!(check_kind("convert", Queue::File, None).unwrap_err().contains("queue file"));
        assert!(check_kind("store", Queue::Batch, None).unwrap_err().contains("sink"));
        assert!(BATCH_KINDS.iter().chain(&GENERIC_KINDS).all(|k| kinds_for(Queue::Batch).contains(k)));
        let f = fail_config(Some(&json!({"attempts": 2, "error_kind": "boom"}))).expect("valid");
        assert_eq!((f.attempts, f.error_kind.as_str(), f.retryable), (Some(2), "boom", true));
    }

    /// A config for each kind that names every place it can, so a new kind must say
    /// what it reaches before this test passes.
    fn sample(name: &str, queue: Queue) -> Option<Value> {
        let collect = json!({"api": "shop", "base_url": "https://api.shop.test/v2", "path": "/orders",
            "auth": {"type": "oauth2_client_credentials", "token_url": "https://auth.shop.test/token", "credentials": {"env": "SHOP"}},
            "fallbacks": [{"location": {"uri": "s3://exports/shop"}}]});
        let location = json!({"uri": "sftp://bob@files.partner.net:2222/upload", "key_file": "/keys/partner"});
        Some(match (name, queue) {
            ("noop" | "sleep" | "fail", _) => return None,
            ("convert" | "quality" | "store" | "classify", _) => json!({
                "inputs": ["/data/in/a.csv"], "rules": {"not_null": ["id"]},
                "sinks": [{"type": "parquet", "path": "/lake/trades"}]}),
            ("reconcile", _) => json!({"key": ["id"], "sinks": [{"type": "parquet", "path": "/lake/trades"}]}),
            ("probe" | "archive" | "fetch", Queue::File) => json!({"location": location}),
            ("discover", _) => json!({"location": location, "patterns": ["*.csv"]}),
            ("collect" | "probe" | "connect" | "check_security" | "check_tls", Queue::Api) => collect,
            ("analyze_failure" | "plan_recovery" | "recover" | "recover_files", _) => {
                json!({"resource": collect, "key": ["id"]})
            }
            ("consume" | "probe", Queue::Stream) => json!({
                "source": {"type": "kafka", "brokers": "k1.test:9092", "topics": ["orders"]},
                "sinks": [{"type": "parquet", "path": "/lake/orders"}]}),
            _ => panic!("kind {name} on {queue} has no sample: add one that names every place it reaches"),
        })
    }

    #[test]
    fn every_kind_says_what_it_reaches() {
        for k in KINDS {
            for &q in k.queues {
                // The generic kinds reach nothing (a sleep still needs its duration).
                let config = if k.name == "sleep" { Some(json!({"duration": "1s"})) } else { sample(k.name, q) };
                let reach = step_reach(k.name, q, config.as_ref()).unwrap_or_else(|e| panic!("{} on {q}: {e}", k.name));
                assert_eq!(reach.is_empty(), GENERIC_KINDS.contains(&k.name), "{} on {q}: {reach:?}", k.name);
            }
        }
        assert!(step_reach("teleport", Queue::Api, None).unwrap_err().contains("teleport"));
        let store = sample("store", Queue::Batch);
        let fields: Vec<String> = step_reach("store", Queue::Batch, store.as_ref())
            .expect("reach")
            .iter()
            .map(|t| t.field().to_string())
            .collect();
        assert_eq!(fields, ["inputs[0]", "sinks[0].path"]);
        let recover = sample("recover_files", Queue::File);
        let reach = step_reach("recover_files", Queue::File, recover.as_ref()).expect("reach");
        assert!(reach.iter().any(|t| t.field() == "resource.fallbacks[0].location.uri"), "{reach:?}");
    }
}
