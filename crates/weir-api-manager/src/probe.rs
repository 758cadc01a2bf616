//! `probe` and `connect`: the checks before a collection, configured like `collect`.
//!
//! - `probe` resolves the credentials (a reference that names nothing fails here) and
//!   requests the resource's first page once (from a fallback while the circuits before it
//!   are open), so a wrong URL or key fails the job's first step, naming the API, before
//!   anything is collected. A child resource's path needs a
//!   parent record, so its probe stops after the credentials.
//! - `connect` obtains what the requests will carry: an OAuth2 token (fetched or renewed
//!   now, so an `invalid_grant` shows here), or the static credentials.

use serde_json::{json, Value};
use weir_core::api::template::Values;
use weir_core::api::CollectStep;
use weir_worker::TaskContext;

use crate::client::{self, Stats};
use crate::collect::{circuit_gone, first_request, rebase, Collect};
use crate::error::CollectError;
use crate::incremental;

impl Collect {
    pub(crate) async fn probe(&self, task: &TaskContext, step: &CollectStep) -> Result<Value, CollectError> {
        // A first page too large for memory is spooled here, and removed with it.
        let dir = self.staging_dir(task);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| CollectError::Staging(format!("creating {}: {e}", dir.display())))?;
        let spool = dir.join(format!(".probe-{}", task.fence));
        let cursor = step.incremental.as_ref().and_then(|i| i.initial.as_ref()).map(incremental::as_param);
        let (r, _) = self.resource(task, step, spool, cursor.clone()).await?;
        let auth = step.auth.as_ref().map_or("none", |a| a.name());
        let needs_parent = step.parent.is_some();
        if needs_parent {
            return Ok(json!({"kind": "probe", "api": step.api, "auth": auth,
                             "request": "not sent: the path needs a parent record"}));
        }
        let req = first_request(&r, &Values { cursor, parent: None })?;
        let mut paginator = crate::paginate::build(&step.paginator)?;
        let mut req = client::Request { url: paginator.first(req.url.clone()), ..req };
        let mut stats = Stats::default();
        // Like the collection, past a source whose circuit is open to the next.
        let mut src = 0;
        let page = loop {
            match r.sources[src].api.fetch(&req, &r.effort, &task.cancel, &mut stats).await {
                Ok(p) => break p,
                Err(e) if src + 1 < r.sources.len() && circuit_gone(&e, &r.sources[src]) => {
                    req.url = rebase(&req.url, &r.sources[src].base_url, &r.sources[src + 1].base_url)?;
                    src += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let bytes = page.body.len();
        let mut out = json!({"kind": "probe", "api": step.api, "auth": auth, "url": client::shown(&req.url, &[]),
                             "answered": "2xx", "bytes": bytes, "requests": stats.requests});
        if src > 0 {
            out["source"] = json!(r.sources[src].label);
        }
        Ok(out)
    }

    pub(crate) async fn connect(&self, task: &TaskContext, step: &CollectStep) -> Result<Value, CollectError> {
        let policy = step.url_policy();
        let security = step.security.as_ref().zip(policy.as_ref());
        let api = self.api(&step.api, &step.api, step.auth.as_ref(), security, &task.guard()).await?;
        let Some(auth) = &api.auth else {
            return Ok(json!({"kind": "connect", "api": step.api, "auth": "none"}));
        };
        let c = auth.credentials().await?;
        Ok(json!({
            "kind": "connect",
            "api": step.api,
            "auth": step.auth.as_ref().map_or("none", |a| a.name()),
            // Which credentials: how many headers and parameters they add, never what.
            "headers": c.headers.len(),
            "query_params": c.query.len(),
        }))
    }
}
