//! The sandbox again, on the manager, before a task runs (the master checked the job at
//! submission): what the task's config reaches must be within its namespace's rule, and
//! each local path must stay inside the allowed roots once symbolic links are resolved —
//! which only the machine holding the files can tell.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_core::catalog::Queue;
use weir_core::sandbox::{normalize, under_roots, Policy, Reach, Touch};

use crate::TaskContext;

/// Whether `ctx` may run under `policy`, or why not.
pub fn check(policy: &Policy, queue: Queue, ctx: &TaskContext) -> Result<(), String> {
    if policy.allows_everything() {
        return Ok(());
    }
    let reach = weir_core::catalog::step_reach(&ctx.kind, queue, ctx.config.as_ref())?;
    policy.check(&ctx.namespace, &reach).map_err(|r| r.to_string())?;
    let Some((name, rule)) = policy.rule(&ctx.namespace) else { return Ok(()) };
    let roots: Vec<PathBuf> = rule.paths.iter().map(|r| resolved(Path::new(r))).collect();
    for t in reach.iter() {
        let Touch::Path { field, path } = t else { continue };
        let lexical = normalize(path)?;
        let real = resolved(&lexical);
        if !under_roots(&real, &roots) {
            return Err(format!(
                "{field}: path {path:?} resolves to {}, outside the allowed roots of namespace {:?} ({}) — rule \
                 sandbox.namespaces.{name:?}.paths",
                real.display(),
                ctx.namespace,
                rule.paths.join(", ")
            ));
        }
    }
    Ok(())
}

/// What a running task may reach, for what it learns only as it runs — a server's
/// next-page URL, a redirect: the manager's policy and the task's namespace.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: Arc<Policy>,
    namespace: String,
}

impl Guard {
    pub fn new(policy: Arc<Policy>, namespace: &str) -> Guard {
        Guard { policy, namespace: namespace.to_string() }
    }

    /// A guard that allows everything (tools, tests).
    pub fn open() -> Guard {
        Guard::new(Arc::new(Policy::allow_all()), "")
    }

    /// The namespace it holds tasks to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether the task may send a request to `url`; the refusal names `field` and the rule.
    pub fn url(&self, field: &str, url: &str) -> Result<(), String> {
        if self.policy.allows_everything() {
            return Ok(());
        }
        self.policy.check(&self.namespace, &Reach(vec![Touch::url(field, url)])).map_err(|r| r.to_string())
    }
}

/// `path` with symbolic links resolved as far as it exists (the rest appended as written:
/// a sink's directory may not exist yet).
fn resolved(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return rest.iter().rev().fold(real, |p: PathBuf, c: &std::ffi::OsString| p.join(c));
        }
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(config: serde_json::Value) -> TaskContext {
        TaskContext {
            task_id: uuid::Uuid::nil(),
            job_id: uuid::Uuid::nil(),
            step_id: "convert".into(),
            kind: "convert".into(),
            config: Some(config),
            attempt: 1,
            fence: 1,
            compensation: false,
            inputs: Vec::new(),
            namespace: "default".into(),
            job_name: "j".into(),
            heartbeat_timeout: std::time::Duration::from_secs(30),
            cancel: Default::default(),
            master: None,
            sandbox: Arc::new(Policy::allow_all()),
        }
    }

    #[test]
    fn a_guard_holds_urls_found_at_run_time_to_the_namespaces_hosts() {
        let policy =
            Policy::from_value(json!({"namespaces": {"shop": {"hosts": ["https://api.shop.test"]}}})).expect("policy");
        let guard = Guard::new(Arc::new(policy), "shop");
        assert_eq!(guard.url("next page", "https://api.shop.test/v1/orders?page=2"), Ok(()));
        let e = guard.url("next page", "http://169.254.169.254/latest/meta-data").expect_err("metadata");
        assert!(e.starts_with("next page: http://169.254.169.254 is not among the hosts allowed"), "{e}");
        assert_eq!(Guard::open().url("redirect", "http://anything.test"), Ok(()));
    }

    #[cfg(unix)]
    #[test]
    fn a_link_out_of_a_root_is_refused_where_the_files_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("allowed");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join("ok.csv"), "a\n1\n").expect("write");
        std::os::unix::fs::symlink("/etc", root.join("escape")).expect("symlink");
        let policy =
            Policy::with_default(vec![root.display().to_string()], vec!["*".into()], vec!["*".into()]).expect("policy");
        let input = |p: &Path| ctx(json!({"inputs": [p.display().to_string()]}));
        assert_eq!(check(&policy, Queue::Batch, &input(&root.join("ok.csv"))), Ok(()));
        // A sink directory that does not exist yet is judged by what exists of it.
        assert_eq!(check(&policy, Queue::Batch, &input(&root.join("new/out.csv"))), Ok(()));
        let e = check(&policy, Queue::Batch, &input(&root.join("escape/shadow"))).expect_err("through the link");
        assert!(e.contains("resolves to /etc/shadow") && e.contains("sandbox.namespaces"), "{e}");
        let e = check(&policy, Queue::Batch, &input(Path::new("/etc/shadow"))).expect_err("outside");
        assert!(e.contains("/etc/shadow"), "{e}");
    }
}
