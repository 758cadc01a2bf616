//! Submission checks. A spec either becomes a [`ValidJob`] (template expanded, defaults
//! filled, steps in dependency order) or a [`SpecError`] whose text names the problem.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::catalog::{check_kind, Queue};
use crate::spec::{JobSpec, RetryPolicy, StepSpec, StepTimeouts};
use crate::template;

/// Why a spec was refused; the text is meant for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Largest config of one step, as JSON text.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Most steps in one job.
pub const MAX_STEPS: usize = 10_000;
/// Longest timeout of a job.
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest timeout of a step attempt.
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most attempts a retry policy may allow.
pub const MAX_ATTEMPTS: u32 = 100;
/// Namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A spec that passed every check; `spec.steps` is in dependency order.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    /// The normalized spec: template expanded, namespace filled, steps topologically sorted.
    pub spec: JobSpec,
    /// W3C `traceparent` of the submission, if the caller sent or the master made one.
    pub trace_parent: Option<String>,
}

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// Whether `s` can name an environment variable (or a prefix of several) a job may read:
/// letters, digits and `_`, not empty, and not one of Weir's own settings (`WEIR`,
/// `WEIR_…`: the managers' tokens and secrets live there, and a job naming them as its
/// credentials would send them to its own server). Secrets are given by such names,
/// never by value.
pub fn is_env_name(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && upper != "WEIR"
        && !upper.starts_with("WEIR_")
}

/// Said with every refused environment variable name.
pub const ENV_NAME_RULE: &str = "letters, digits and _; not WEIR or WEIR_…, Weir's own settings";

/// Names, keys and ids: short, plain ASCII, safe in URLs, file names and JSON paths.
pub fn check_name(what: &str, s: &str, max: usize) -> Result<(), SpecError> {
    if s.is_empty() {
        return err(format!("{what} is empty"));
    }
    if s.len() > max {
        return err(format!("{what} {s:?} is longer than {max} characters"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return err(format!("{what} {s:?} may hold only letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

/// Step ids: a-z, 0-9, '_' and '-', at most 64.
pub fn check_step_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        err(format!("step id {id:?} must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"))
    }
}

fn check_duration(what: &str, d: Option<Duration>, max: Duration) -> Result<(), SpecError> {
    match d {
        Some(d) if d.is_zero() => err(format!("{what} must be greater than zero")),
        Some(d) if d > max => {
            err(format!("{what} {} exceeds the limit of {}", crate::duration::format(d), crate::duration::format(max)))
        }
        _ => Ok(()),
    }
}

/// PostgreSQL cannot store a NUL character in text or JSON, so it is refused up front
/// rather than failing a whole commit later.
fn check_no_nul(what: &str, v: &Value) -> Result<(), SpecError> {
    match nul_at(v, "") {
        Some(_) => err(format!("{what} contains a NUL character")),
        None => Ok(()),
    }
}

/// Where `v` holds a NUL character (in a string or a key), as a path below `at`
/// (`.a[0]`), if anywhere.
pub(crate) fn nul_at(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(at.to_string()),
        Value::Object(m) => m.iter().find_map(|(k, c)| {
            let here = format!("{at}.{k}");
            if k.contains('\0') {
                Some(here)
            } else {
                nul_at(c, &here)
            }
        }),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, c)| nul_at(c, &format!("{at}[{i}]"))),
        _ => None,
    }
}

fn check_config(what: &str, config: Option<&Value>) -> Result<(), SpecError> {
    if let Some(c) = config {
        check_no_nul(what, c)?;
        if !c.is_object() {
            return err(format!("{what} must be a JSON object, got {c}"));
        }
        let size = c.to_string().len();
        if size > MAX_CONFIG_BYTES {
            return err(format!("{what} is {size} bytes, over the limit of {MAX_CONFIG_BYTES}"));
        }
    }
    Ok(())
}

fn check_retry(what: &str, r: &RetryPolicy) -> Result<(), SpecError> {
    if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS {
        return err(format!("{what}.max_attempts must be 1..={MAX_ATTEMPTS}, got {}", r.max_attempts));
    }
    check_duration(&format!("{what}.initial_interval"), r.initial_interval, MAX_STEP_TIMEOUT)?;
    check_duration(&format!("{what}.max_interval"), r.max_interval, MAX_STEP_TIMEOUT)?;
    if !r.backoff_coefficient.is_finite() || !(1.0..=100.0).contains(&r.backoff_coefficient) {
        return err(format!("{what}.backoff_coefficient must be between 1 and 100, got {}", r.backoff_coefficient));
    }
    if !r.jitter.is_finite() || !(0.0..=1.0).contains(&r.jitter) {
        return err(format!("{what}.jitter must be between 0 and 1, got {}", r.jitter));
    }
    if let (Some(i), Some(m)) = (r.initial_interval, r.max_interval) {
        if m < i {
            return err(format!("{what}.max_interval is shorter than initial_interval"));
        }
    }
    Ok(())
}

fn check_timeouts(what: &str, t: &StepTimeouts) -> Result<(), SpecError> {
    check_duration(&format!("{what}.schedule_to_start"), t.schedule_to_start, MAX_STEP_TIMEOUT)?;
    check_duration(&format!("{what}.start_to_close"), t.start_to_close, MAX_STEP_TIMEOUT)?;
    check_duration(&format!("{what}.heartbeat"), t.heartbeat, MAX_STEP_TIMEOUT)?;
    if t.heartbeat() > t.start_to_close() {
        return err(format!("{what}.heartbeat is longer than start_to_close"));
    }
    Ok(())
}

fn check_step(s: &StepSpec) -> Result<(), SpecError> {
    let what = format!("step {:?}", s.id);
    let queue: Queue = s.queue.parse().map_err(|e: String| SpecError(format!("{what}: {e}")))?;
    check_config(&format!("{what} config"), s.config.as_ref())?;
    check_kind(&s.kind, queue, s.config.as_ref()).map_err(|e| SpecError(format!("{what}: {e}")))?;
    if let Some(r) = &s.retry {
        check_retry(&format!("{what} retry"), r)?;
    }
    if let Some(t) = &s.timeouts {
        check_timeouts(&format!("{what} timeouts"), t)?;
    }
    if let Some(c) = &s.compensation {
        let cq: Queue = match &c.queue {
            Some(q) => q.parse().map_err(|e: String| SpecError(format!("{what} compensation: {e}")))?,
            None => queue,
        };
        check_config(&format!("{what} compensation config"), c.config.as_ref())?;
        check_kind(&c.kind, cq, c.config.as_ref()).map_err(|e| SpecError(format!("{what} compensation: {e}")))?;
        if let Some(r) = &c.retry {
            check_retry(&format!("{what} compensation retry"), r)?;
        }
    }
    Ok(())
}

/// Checks a spec and returns it normalized, or the first problem found. A job that names
/// a connection is refused here: the master gives the namespace's with [`validate_with`].
pub fn validate(spec: JobSpec) -> Result<ValidJob, SpecError> {
    validate_with(spec, &crate::connection::NoConnections)
}

/// [`validate`], with `{$connection: …}` references in the steps' configs (also those a
/// template received through params) replaced by the namespace's `connections`
/// ([`crate::connection::expand`]) before the steps are bound and checked.
pub fn validate_with(
    mut spec: JobSpec,
    connections: &dyn crate::connection::Connections,
) -> Result<ValidJob, SpecError> {
    if spec.namespace.is_empty() {
        spec.namespace = DEFAULT_NAMESPACE.to_string();
    }
    check_name("namespace", &spec.namespace, 64)?;
    check_name("job name", &spec.name, 128)?;
    if !spec.run_id.is_empty() {
        check_name("run_id", &spec.run_id, 128)?;
    }
    if spec.labels.len() > 64 {
        return err(format!("a job may have at most 64 labels, got {}", spec.labels.len()));
    }
    for (k, v) in &spec.labels {
        check_name("label key", k, 63)?;
        if v.len() > 256 {
            return err(format!("label {k:?} value is longer than 256 characters"));
        }
        if v.contains('\0') {
            return err(format!("label {k:?} value contains a NUL character"));
        }
    }
    if let Some(p) = &spec.params {
        check_no_nul("params", p)?;
    }
    check_duration("job timeout", spec.timeout, MAX_JOB_TIMEOUT)?;
    match (&spec.template, spec.steps.is_empty()) {
        (Some(_), false) => return err("give either steps or a template, not both"),
        (Some(t), true) => {
            spec.steps = template::expand(t, spec.params.as_ref()).map_err(SpecError)?;
        }
        (None, true) => return err("job has no steps (give steps or a template)"),
        // With steps, params fill their configs' `{params.…}` placeholders.
        (None, false) => {}
    }
    if let Some(p) = &spec.params {
        if !p.is_object() {
            return err(format!("params must be a JSON object, got {p}"));
        }
    }
    for s in &mut spec.steps {
        let at = |e: String| SpecError(format!("step {:?} {e}", s.id));
        if let Some(c) = s.config.as_mut() {
            crate::connection::expand(c, &spec.namespace, connections).map_err(at)?;
        }
        if let Some(c) = s.compensation.as_mut().and_then(|c| c.config.as_mut()) {
            crate::connection::expand(c, &spec.namespace, connections).map_err(|e| at(format!("compensation {e}")))?;
        }
        crate::catalog::bind_to_job(s, spec.params.as_ref()).map_err(|e| SpecError(format!("step {:?}: {e}", s.id)))?;
    }
    if spec.steps.len() > MAX_STEPS {
        return err(format!("job has {} steps, over the limit of {MAX_STEPS}", spec.steps.len()));
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(spec.steps.len());
    for (i, s) in spec.steps.iter().enumerate() {
        check_step_id(&s.id)?;
        if index.insert(s.id.as_str(), i).is_some() {
            return err(format!("duplicate step id {:?}", s.id));
        }
    }
    for s in &spec.steps {
        check_step(s)?;
        let mut seen = HashSet::new();
        for d in &s.depends_on {
            if d == &s.id {
                return err(format!("step {:?} depends on itself", s.id));
            }
            if !index.contains_key(d.as_str()) {
                return err(format!("step {:?} depends on unknown step {d:?}", s.id));
            }
            if !seen.insert(d) {
                return err(format!("step {:?} lists dependency {d:?} twice", s.id));
            }
        }
    }
    let order = topological_order(&spec.steps, &index)?;
    let mut slots: Vec<Option<StepSpec>> = std::mem::take(&mut spec.steps).into_iter().map(Some).collect();
    spec.steps = order.into_iter().filter_map(|i| slots[i].take()).collect();
    Ok(ValidJob { spec, trace_parent: None })
}

/// Kahn's algorithm, keeping the written order among independent steps; names a cycle if any.
fn topological_order(steps: &[StepSpec], index: &HashMap<&str, usize>) -> Result<Vec<usize>, SpecError> {
    let n = steps.len();
    let mut indegree = vec![0usize; n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in steps.iter().enumerate() {
        for d in &s.depends_on {
            let p = index[d.as_str()];
            children[p].push(i);
            indegree[i] += 1;
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk dependencies among the leftover steps until one repeats: that is a cycle.
    let Some(start) = (0..n).find(|&i| indegree[i] > 0) else {
        return err("dependency cycle");
    };
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let Some(next) = steps[cur].depends_on.iter().map(|d| index[d.as_str()]).find(|&p| indegree[p] > 0) else {
            return err("dependency cycle");
        };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            // The walk follows depends_on, so each step named depends on the next.
            let mut cycle: Vec<&str> = path[pos..].iter().map(|&i| steps[i].id.as_str()).collect();
            cycle.push(steps[next].id.as_str());
            return err(format!("dependency cycle: {} (each step depends on the next)", cycle.join(" -> ")));
        }
        path.push(next);
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weirs_own_settings_are_not_a_jobs_environment_variables() {
        assert!(is_env_name("SHOP") && is_env_name("WEIRD_API") && is_env_name("shop_token"));
        for reserved in ["WEIR", "weir", "WEIR_TOKEN", "Weir_Auth_HS256_SECRET"] {
            assert!(!is_env_name(reserved), "{reserved}");
        }
        assert!(!is_env_name("") && !is_env_name("A-B"));
    }
    use serde_json::json;

    fn step(id: &str, deps: &[&str]) -> StepSpec {
        StepSpec {
            id: id.into(),
            kind: "noop".into(),
            queue: "api".into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    fn job(steps: Vec<StepSpec>) -> JobSpec {
        JobSpec { name: "j".into(), steps, ..Default::default() }
    }

    fn rejects(spec: JobSpec, needle: &str) {
        let e = validate(spec).expect_err("should be rejected");
        assert!(e.0.contains(needle), "{:?} should mention {needle:?}", e.0);
    }

    #[test]
    fn orders_steps_and_fills_defaults() {
        let v = validate(job(vec![step("c", &["b"]), step("b", &["a"]), step("a", &[])])).expect("valid");
        let ids: Vec<_> = v.spec.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert_eq!(v.spec.namespace, "default");
    }

    #[test]
    fn job_params_fill_collect_configs_and_a_parent_must_be_a_dependency() {
        let collect = |id: &str, deps: &[&str], config: Value| StepSpec {
            kind: "collect".into(),
            config: Some(config),
            ..step(id, deps)
        };
        let users =
            json!({"api": "shop", "base_url": "https://h", "path": "/users", "params": {"org": "{params.org}"}});
        let orders = json!({"api": "shop", "base_url": "https://h", "path": "/users/{parent.id}/orders",
                            "parent": {"step": "users"}});
        let mut spec = job(vec![collect("users", &[], users.clone()), collect("orders", &["users"], orders.clone())]);
        spec.params = Some(json!({"org": "acme"}));
        let v = validate(spec).expect("valid");
        assert_eq!(v.spec.steps[0].config.as_ref().map(|c| c["params"]["org"].clone()), Some(json!("acme")));
        rejects(job(vec![collect("users", &[], users.clone())]), "step \"users\": params.org: {params.org}");
        let mut orphan = job(vec![
            collect("users", &[], json!({"api": "shop", "base_url": "https://h"})),
            collect("orders", &[], orders),
        ]);
        orphan.params = None;
        rejects(orphan, "parent.step \"users\" must be among depends_on");
    }

    #[test]
    fn every_bad_spec_is_named() {
        rejects(job(vec![]), "no steps");
        rejects(job(vec![step("a", &["b"]), step("b", &["a"])]), "dependency cycle: a -> b -> a (");
        rejects(
            job(vec![step("a", &[]), step("b", &["c"]), step("c", &["d"]), step("d", &["b"])]),
            "dependency cycle: b -> c -> d -> b (",
        );
        rejects(job(vec![step("a", &[]), step("a", &[])]), "duplicate step id \"a\"");
        rejects(job(vec![step("a", &["zz"])]), "unknown step \"zz\"");
        rejects(job(vec![step("a", &["a"])]), "itself");
        rejects(job(vec![step("Bad Id", &[])]), "step id");
        let mut s = step("a", &[]);
        s.queue = "ftp".into();
        rejects(job(vec![s]), "unknown queue \"ftp\"");
        let mut s = step("a", &[]);
        s.kind = "teleport".into();
        rejects(job(vec![s]), "unknown kind \"teleport\"");
        let mut s = step("a", &[]);
        s.config = Some(json!({"blob": "x".repeat(MAX_CONFIG_BYTES)}));
        rejects(job(vec![s]), "over the limit");
        let mut s = step("a", &[]);
        s.config = Some(json!([1, 2]));
        rejects(job(vec![s]), "JSON object");
        let mut s = step("a", &[]);
        s.timeouts = Some(StepTimeouts { start_to_close: Some(Duration::ZERO), ..Default::default() });
        rejects(job(vec![s]), "start_to_close must be greater than zero");
        let mut s = step("a", &[]);
        s.retry = Some(RetryPolicy { jitter: 3.0, ..Default::default() });
        rejects(job(vec![s]), "jitter");
        let mut s = step("a", &[]);
        s.retry = Some(RetryPolicy { max_attempts: 0, ..Default::default() });
        rejects(job(vec![s]), "max_attempts");
        let mut j = job(vec![step("a", &[])]);
        j.timeout = Some(Duration::from_secs(400 * 24 * 3600));
        rejects(j, "exceeds");
        let mut j = job(vec![step("a", &[])]);
        j.name = String::new();
        rejects(j, "job name is empty");
        let mut j = job(vec![step("a", &[])]);
        j.template = Some("standard".into());
        rejects(j, "either steps or a template");
        let mut s = step("a", &[]);
        s.compensation = Some(crate::spec::CompensationSpec { kind: "nope".into(), ..Default::default() });
        rejects(job(vec![s]), "compensation: unknown kind");
        let mut s = step("a", &[]);
        s.config = Some(json!({"deep": [{"x": "a\u{0}b"}]}));
        rejects(job(vec![s]), "config contains a NUL character");
        let mut j = job(vec![step("a", &[])]);
        j.labels.insert("team".into(), "a\u{0}".into());
        rejects(j, "label \"team\" value contains a NUL");
    }

    #[test]
    fn templates_validate() {
        for t in template::TEMPLATES {
            let spec = JobSpec { name: "t".into(), template: Some(t.into()), ..Default::default() };
            let v = validate(spec).expect(t);
            assert!(!v.spec.steps.is_empty());
        }
    }
}
