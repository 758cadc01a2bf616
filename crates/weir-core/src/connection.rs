//! Named connections: an admin defines, per namespace, the locations, APIs and sinks a
//! team's jobs may use — a piece of step config with its credentials *by reference*
//! (an environment variable or a mounted file on the managers, never the secret) — and a
//! job names one where it would write that config:
//!
//! ```yaml
//! config:
//!   location: {$connection: finance-lake}          # the whole location
//!   sinks: [{$connection: warehouse, table: orders}]  # the sink, plus a field it leaves open
//! ```
//!
//! At submission the master replaces each `{$connection: name, …}` object with the
//! connection's config, adding the job's other fields; a field the connection sets may not
//! be changed by the job. The job is then checked and sandboxed as if its author had
//! written the result, so a connection is named configuration, not a hole in the
//! sandbox: the namespace's rule must allow what the connection reaches. The stored job
//! keeps the expanded config, so a later edit of the connection changes new jobs only.
//!
//! Pure: the master fetches the namespace's connections ([`Connections`]) and calls
//! [`expand`] through [`crate::validate::validate_with`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Millis;

/// The key that names a connection inside a step's config.
pub const KEY: &str = "$connection";
/// Largest connection config, as JSON.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Longest description.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most connections one namespace may hold (all are read for a job that names one).
pub const MAX_PER_NAMESPACE: usize = 1000;

/// One named connection of a namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub namespace: String,
    pub name: String,
    /// What it is, for job authors (`weir connections list`).
    #[serde(default)]
    pub description: String,
    /// The step config it stands for: a JSON object.
    pub config: Value,
    /// When it was last written, and by whom (filled by the master).
    #[serde(default)]
    pub updated_ms: Millis,
    #[serde(default)]
    pub updated_by: String,
}

impl Connection {
    /// Checks what an admin wrote; the error names the problem.
    pub fn check(&self) -> Result<(), String> {
        crate::validate::check_name("namespace", &self.namespace, 64).map_err(|e| e.0)?;
        crate::validate::check_name("connection name", &self.name, 64).map_err(|e| e.0)?;
        if self.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(format!("description is longer than {MAX_DESCRIPTION_BYTES} bytes"));
        }
        if self.description.contains('\0') {
            return Err("description contains a NUL character".into());
        }
        if !self.config.is_object() {
            return Err(format!("config must be a JSON object (the step config it stands for), got {}", self.config));
        }
        let size = self.config.to_string().len();
        if size > MAX_CONFIG_BYTES {
            return Err(format!("config is {size} bytes as JSON, over the limit of {MAX_CONFIG_BYTES}"));
        }
        if let Some(at) = find_key(&self.config, "") {
            return Err(format!("config{at} names a connection ({KEY}); a connection may not name another"));
        }
        if let Some(at) = crate::validate::nul_at(&self.config, "") {
            return Err(format!("config{at} contains a NUL character"));
        }
        Ok(())
    }
}

/// A change an admin makes, committed with its audit record.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionChange {
    /// Creates or replaces.
    Put(Connection),
    /// Removes (jobs already submitted keep their expanded config).
    Delete { namespace: String, name: String },
}

/// The connections a job's namespace holds, by name.
pub trait Connections {
    /// The config of connection `name`, if the namespace has it.
    fn config(&self, name: &str) -> Option<&Value>;
}

impl Connections for BTreeMap<String, Value> {
    fn config(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// No connections: any `$connection` is refused as unknown.
pub struct NoConnections;

impl Connections for NoConnections {
    fn config(&self, _: &str) -> Option<&Value> {
        None
    }
}

/// Whether `v` names any connection (so the master reads the namespace's connections only
/// for a job that uses one).
pub fn mentions(v: &Value) -> bool {
    find_key(v, "").is_some()
}

/// Replaces every `{$connection: name, …}` object in `config` with the connection's config
/// plus the object's other fields. Refused, naming the place (`location`, `sinks[0]`): a
/// name that is not a string, a connection `namespace` does not hold, and a field the job
/// sets that the connection already sets.
pub fn expand(config: &mut Value, namespace: &str, found: &dyn Connections) -> Result<(), String> {
    expand_at(config, "", namespace, found)
}

fn expand_at(v: &mut Value, at: &str, namespace: &str, found: &dyn Connections) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            if let Some(name) = m.remove(KEY) {
                let place = if at.is_empty() { "config".to_string() } else { at.to_string() };
                let Value::String(name) = name else {
                    return Err(format!("{place}: {KEY} must be a connection's name, got {name}"));
                };
                let Some(Value::Object(base)) = found.config(&name) else {
                    return Err(format!(
                        "{place}: connection {name:?} not found in namespace {namespace:?} \
                         (an admin defines it: weir connections put -n {namespace} {name} …)"
                    ));
                };
                let mut merged: Map<String, Value> = base.clone();
                for (k, val) in std::mem::take(m) {
                    if merged.contains_key(&k) {
                        let field = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                        return Err(format!(
                            "{field}: set by connection {name:?}, which a job may not change \
                             (leave it out, or ask an admin for a connection without it)"
                        ));
                    }
                    merged.insert(k, val);
                }
                *m = merged;
                // The job's own fields may hold further references; the connection's may not.
            }
            for (k, c) in m.iter_mut() {
                let sub = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                expand_at(c, &sub, namespace, found)?;
            }
            Ok(())
        }
        Value::Array(a) => {
            for (i, c) in a.iter_mut().enumerate() {
                expand_at(c, &format!("{at}[{i}]"), namespace, found)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Where `v` holds a `$connection` key, as a path suffix (`.location`, `[0]`), if anywhere.
fn find_key(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::Object(m) => {
            if m.contains_key(KEY) {
                return Some(at.to_string());
            }
            m.iter().find_map(|(k, c)| find_key(c, &format!("{at}.{k}")))
        }
        Value::Array(a) => a.iter().enumerate().find_map(|(i, c)| find_key(c, &format!("{at}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lake() -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        m.insert("lake".to_string(), json!({"uri": "s3://finance-lake/raw", "credentials": {"env": "FINANCE_S3"}}));
        m.insert("warehouse".to_string(), json!({"type": "postgres", "url_env": "FINANCE_PG_URL"}));
        m
    }

    #[test]
    fn a_reference_becomes_the_connections_config_plus_the_jobs_fields() {
        let mut c = json!({"location": {"$connection": "lake"}, "sinks": [{"$connection": "warehouse", "table": "t"}]});
        assert!(mentions(&c));
        expand(&mut c, "finance", &lake()).expect("expands");
        assert_eq!(
            c,
            json!({"location": {"uri": "s3://finance-lake/raw", "credentials": {"env": "FINANCE_S3"}},
                   "sinks": [{"type": "postgres", "url_env": "FINANCE_PG_URL", "table": "t"}]})
        );
        assert!(!mentions(&c));
    }

    #[test]
    fn a_job_may_not_change_what_the_connection_sets() {
        let mut c = json!({"location": {"$connection": "lake", "uri": "file:///etc"}});
        let e = expand(&mut c, "finance", &lake()).unwrap_err();
        assert!(e.contains("location.uri: set by connection \"lake\""), "{e}");
    }

    #[test]
    fn an_unknown_or_malformed_reference_is_named() {
        let mut c = json!({"sinks": [{"path": "/x"}, {"$connection": "nope"}]});
        let e = expand(&mut c, "finance", &lake()).unwrap_err();
        assert!(e.starts_with("sinks[1]: connection \"nope\" not found in namespace \"finance\""), "{e}");
        let mut c = json!({"$connection": 7});
        let e = expand(&mut c, "finance", &NoConnections).unwrap_err();
        assert!(e.starts_with("config: $connection must be a connection's name"), "{e}");
    }

    #[test]
    fn an_admins_connection_is_checked() {
        let ok = Connection {
            namespace: "finance".into(),
            name: "lake".into(),
            description: "raw zone".into(),
            config: json!({"uri": "s3://b"}),
            updated_ms: 0,
            updated_by: String::new(),
        };
        assert_eq!(ok.check(), Ok(()));
        let bad = |f: fn(&mut Connection)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(bad(|c| c.config = json!("s3://b")).contains("must be a JSON object"));
        assert!(bad(|c| c.config = json!({"a": {"$connection": "x"}})).contains("config.a names a connection"));
        assert!(bad(|c| c.name = "Bad Name".into()).contains("connection name"));
        assert!(bad(|c| c.config = json!({"a": ["x\0"]})).contains("config.a[0] contains a NUL"));
        assert!(bad(|c| c.config = json!({"a": "x".repeat(MAX_CONFIG_BYTES)})).contains("over the limit"));
    }
}
