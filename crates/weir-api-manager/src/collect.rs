//! The `collect` kind: a resource page by page into staged files.
//!
//! Each attempt requests the first page, selects its records, writes them to bounded
//! staged files, asks the paginator for the next page, and so on until the last page,
//! `has_more` reading false, or `max_pages`; a next page it has requested before is an
//! error naming it (the same cursor twice would never end). The report counts pages,
//! records, requests, retries and bytes, and lists each staged file with its records, for
//! `convert` to take (`source` is the file's identity in the sinks).
//!
//! A child resource ([`parent`]) runs that loop once per parent record, `parent.parallel`
//! at once, its placeholders filled from the record. An incremental one ([`incremental`])
//! reads the stored watermark first, sends it as `{cursor}`, skips the records at or
//! before it, and proposes the next mark in its report for the master to store when the
//! job succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use url::Url;
use weir_core::api::security::{SecuritySpec, UrlPolicy};
use weir_core::api::template::{self, Template, Values};
use weir_core::api::{
    AuthSpec, BodyFormat, CollectStep, FallbackSpec, HttpMethod, DEFAULT_MAX_PAGE_BYTES, DEFAULT_MAX_RETRIES,
    DEFAULT_PARENT_PARALLEL, DEFAULT_RECORDS_PER_FILE,
};
use weir_core::catalog::API_KINDS;
use weir_core::events::api_event;
use weir_worker::notice::Notices;
use weir_worker::quota::Quotas;
use weir_worker::sandbox::Guard;
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::breaker::Breakers;
use crate::checkpoint::{self, Checkpoints, Saved};
use crate::client::{self, Api, Body, Effort, Request, Stats};
use crate::error::CollectError;
use crate::incremental::{self, Incremental};
use crate::output::Output;
use crate::paginate::{self, Page};
use crate::parent;
use crate::records::{self, Selector};
use crate::ApiSettings;

/// Runs `collect`, holding each API's client, credentials and limits across tasks.
pub struct Collect {
    settings: ApiSettings,
    staging: weir_worker::staging::Staging,
    /// By API name and the auth it was made with.
    apis: Mutex<HashMap<String, Arc<Api>>>,
    /// By circuit name: one per API whatever auth a step uses, one per fallback.
    breakers: Arc<Breakers>,
    /// The fleet-wide buckets, shared over the heartbeat.
    quotas: Quotas,
    /// Circuit changes, for `weir.apis`.
    notices: Notices,
}

impl Collect {
    pub fn new(settings: ApiSettings, quotas: Quotas, notices: Notices, breakers: Arc<Breakers>) -> Collect {
        Collect { staging: settings.staging(), settings, apis: Mutex::default(), breakers, quotas, notices }
    }

    /// Where staged files and reports go.
    pub(crate) fn staging(&self) -> &weir_worker::staging::Staging {
        &self.staging
    }

    /// This task's staging folder.
    pub(crate) fn staging_dir(&self, task: &TaskContext) -> std::path::PathBuf {
        self.staging.dir(task)
    }

    /// The API one source of a step calls, by its circuit's name (the step's API, or
    /// `<api>#<n>` for its n-th fallback) and credentials, made on first use (credentials
    /// read then); its limits are the step's API's, whichever source calls.
    pub(crate) async fn api(
        &self,
        circuit: &str,
        api: &str,
        auth: Option<&AuthSpec>,
        security: Option<(&SecuritySpec, &UrlPolicy)>,
        guard: &Guard,
    ) -> Result<Arc<Api>, CollectError> {
        // Per namespace too: the client's redirects are held to the namespace's sandbox.
        let key = format!(
            "{circuit} {} {security:?} {}",
            serde_json::to_string(&auth).unwrap_or_default(),
            guard.namespace()
        );
        let mut apis = self.apis.lock().await;
        if let Some(a) = apis.get(&key) {
            return Ok(a.clone());
        }
        let http = client::http_client(self.settings.sessions_of(api), security, guard.clone())?;
        let auth = match auth {
            Some(spec) => Some(crate::auth::build(spec, circuit, &http, &self.settings.data_dir)?),
            None => None,
        };
        let (own, all) = (self.settings.rate_of(api), self.settings.global_rate);
        let limits = [
            self.quotas.bucket(&crate::quota_key(api), own.per_minute, own.burst),
            self.quotas.bucket(crate::GLOBAL_QUOTA_KEY, all.per_minute, all.burst),
        ]
        .into_iter()
        .flatten()
        .collect();
        let breaker = self.breakers.get(circuit, self.settings.circuit_of(api));
        let api = Arc::new(Api::new(circuit, http, auth, limits, breaker, security.map(|(_, p)| p.clone())));
        apis.insert(key, api.clone());
        Ok(api)
    }

    /// The API sources of a step, primary first, and its files fallback (with its index).
    async fn sources<'a>(
        &self,
        step: &'a CollectStep,
        guard: &Guard,
    ) -> Result<(Vec<Source>, Option<(usize, &'a FallbackSpec)>), CollectError> {
        let policy = step.url_policy();
        let security = step.security.as_ref().zip(policy.as_ref());
        let primary = self.api(&step.api, &step.api, step.auth.as_ref(), security, guard).await?;
        let mut sources = vec![Source { api: primary, base_url: step.base_url.clone(), label: source_label(step, 0) }];
        let mut files = None;
        for (i, f) in step.fallbacks.iter().enumerate() {
            if f.location.is_some() {
                files = Some((i + 1, f));
                continue;
            }
            let circuit = format!("{}#{}", step.api, i + 1);
            let api = self.api(&circuit, &step.api, f.auth.as_ref().or(step.auth.as_ref()), security, guard).await?;
            sources.push(Source {
                api,
                base_url: step.source_base_url(i + 1).to_string(),
                label: source_label(step, i + 1),
            });
        }
        Ok((sources, files))
    }

    /// What every request of a step needs: its sources, its parsed templates, how hard to
    /// try; and its files fallback. A body too large for memory is spooled to `spool`;
    /// every URL is held to `task`'s sandbox.
    pub(crate) async fn resource<'a>(
        &self,
        task: &TaskContext,
        step: &'a CollectStep,
        spool: std::path::PathBuf,
        cursor: Option<String>,
    ) -> Result<(Resource<'a>, Option<(usize, &'a FallbackSpec)>), CollectError> {
        let guard = task.guard();
        let (sources, files_fallback) = self.sources(step, &guard).await?;
        let templates =
            |m: &std::collections::BTreeMap<String, String>| -> Result<Vec<(String, Template)>, CollectError> {
                m.iter()
                    .map(|(k, v)| Template::parse(v).map(|t| (k.clone(), t)).map_err(CollectError::Config))
                    .collect()
            };
        let resource = Resource {
            step,
            sources,
            selector: Arc::new(Selector::parse(&step.records)?),
            has_more: step.has_more.as_deref().map(|p| paginate::json_path("has_more", p)).transpose()?,
            effort: Effort {
                max_attempts: step.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
                timeout: step.timeout(),
                spool,
                guard,
            },
            path: Template::parse(&step.path).map_err(CollectError::Config)?,
            headers: templates(&step.headers)?,
            params: templates(&step.params)?,
            cursor,
            spools: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((resource, files_fallback))
    }

    /// Collects a resource; `adopt` starts a recovery from what a failed collection
    /// fetched, at the source it chose (this task's own checkpoints come first).
    pub(crate) async fn collect(
        &self,
        task: &TaskContext,
        step: &CollectStep,
        adopt: Option<Adopt>,
    ) -> Result<Value, CollectError> {
        let dir = self.staging.dir(task).join(format!("attempt-{}", task.fence));
        let per_file = step.records_per_file.unwrap_or(DEFAULT_RECORDS_PER_FILE);
        let key = step.watermark_key(&task.job_name, &task.step_id);
        let from = match (&step.incremental, &key) {
            (Some(_), Some(k)) => weir_worker::watermark::stored(task, k).await?,
            _ => None,
        };
        let tracker = || -> Result<Option<Incremental>, CollectError> {
            match (&step.incremental, &key) {
                (Some(spec), Some(k)) => Ok(Some(Incremental::new(spec, k.clone(), from.clone())?)),
                _ => Ok(None),
            }
        };
        let cursor = step
            .incremental
            .as_ref()
            .and_then(|spec| from.as_ref().map(|m| &m.value).or(spec.initial.as_ref()))
            .map(incremental::as_param);
        // A collection that is not a child's checkpoints, and goes on from an earlier
        // attempt's checkpoint of the same config and cursor.
        let config = task.config.as_ref().map(Value::to_string).unwrap_or_default();
        let checkpoints = step.parent.is_none().then(|| {
            Arc::new(Checkpoints::new(
                &self.staging.dir(task),
                task.fence,
                checkpoint::fingerprint(&config, cursor.as_deref()),
            ))
        });
        let mut resumed = checkpoints.as_ref().and_then(|c| c.latest());
        let mut start_source = 0;
        if let (None, Some(a)) = (&resumed, adopt) {
            resumed = a.saved;
            start_source = a.source;
        }
        let mut incremental = tracker()?;
        // A checkpoint whose incremental state does not read is not resumed: the mark
        // proposed would miss what its staged files hold.
        if let (Some(i), Some(saved)) = (incremental.as_mut(), resumed.as_ref()) {
            if !saved.incremental.as_ref().is_some_and(|state| i.restore(state)) {
                resumed = None;
                incremental = tracker()?;
            }
        }
        let out = match resumed.as_ref().map(|s| Output::resume(&dir, per_file, &s.parts)).transpose()?.flatten() {
            Some(out) => out,
            None => {
                resumed = None;
                incremental = tracker()?;
                Output::new(&dir, per_file)?
            }
        };
        let (resource, files_fallback) = self.resource(task, step, dir.join(".page"), cursor).await?;
        let landing = Arc::new(std::sync::Mutex::new(Landing { out, incremental }));
        let start = Start { checkpoints: checkpoints.clone(), resumed, source: start_source };
        let (tally, parents, landing) = match self.collect_apis(task, &resource, &landing, &dir, start).await {
            Ok((t, p)) => (t, p, landing),
            Err(e) => match files_fallback {
                // Every API source's circuit is open: the whole resource comes from files,
                // and what the APIs gave so far is dropped (the files hold it too).
                Some((idx, f)) if resource.sources.last().is_some_and(|s| circuit_gone(&e, s)) => {
                    drop(landing);
                    let fresh =
                        Landing { out: Output::new(&dir.join("from-files"), per_file)?, incremental: tracker()? };
                    let fresh = Arc::new(std::sync::Mutex::new(fresh));
                    let mut t = self.collect_files(&resource, f, idx, &fresh, &dir, &task.cancel).await.map_err(
                        |fe| match fe {
                            CollectError::Transient(m) => {
                                CollectError::Transient(format!("{m} (the APIs before: {e})"))
                            }
                            CollectError::Config(m) => CollectError::Config(format!("{m} (the APIs before: {e})")),
                            other => other,
                        },
                    )?;
                    t.degraded = Some((idx, e.to_string()));
                    (t, 0, fresh)
                }
                _ => return Err(e),
            },
        };
        let Landing { out, incremental } = match Arc::try_unwrap(landing) {
            Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(_) => return Err(CollectError::Staging("the staged output is still in use".into())),
        };
        let label = |i: usize| source_label(step, i);
        let parts = out.finish()?;
        let mut files = Vec::with_capacity(parts.len());
        for p in &parts {
            let name = p.path.strip_prefix(&dir).map(|r| r.display().to_string()).unwrap_or_else(|_| p.name.clone());
            let path = self
                .staging
                .leave(task, &p.path, &format!("attempt-{}/{name}", task.fence))
                .await
                .map_err(|e| CollectError::Staging(e.message))?;
            let mut f = json!({
                "path": path,
                "source": format!("api://{}/{}/{}/{}", step.api, task.job_id, task.step_id, p.name),
                "records": p.records,
            });
            if !step.fallbacks.is_empty() {
                f["from"] = json!(label(p.source));
            }
            files.push(f);
        }
        if let Some(c) = &checkpoints {
            c.clear();
        }
        let base = format!("{}{}", step.base_url.trim_end_matches('/'), step.path);
        tracing::info!(api = %step.api, pages = tally.pages(), records = tally.kept(), requests = tally.stats.requests, "collected");
        let mut report = json!({
            "kind": "collect",
            "api": step.api,
            "resource": base,
            "paginator": step.paginator.name(),
            "pages": tally.pages(),
            "records": tally.kept(),
            "requests": tally.stats.requests,
            "retried": tally.stats.retried,
            "bytes": tally.stats.bytes,
            "files": files,
        });
        if step.parent.is_some() {
            report["parents"] = json!(parents);
        }
        if !step.fallbacks.is_empty() {
            report["sources"] = tally
                .by_source
                .iter()
                .map(|(i, (pages, records))| json!({"source": label(*i), "pages": pages, "records": records}))
                .collect();
        }
        if let Some((i, why)) = &tally.degraded {
            let said = format!("collected from {} after the circuit before it opened: {why}", label(*i));
            tracing::warn!(api = %step.api, job_id = %task.job_id, "{said}");
            self.notices.push(
                api_event::DEGRADED,
                &step.api,
                json!({"job_id": task.job_id.to_string(), "step_id": task.step_id, "source": label(*i), "reason": why}),
                weir_runtime::now_ms(),
            );
            report[weir_core::engine::DEGRADED_KEY] = json!(said);
        }
        if let Some(i) = &incremental {
            report["records_read"] = json!(tally.read);
            report["already_collected"] = json!(i.skipped);
            report["cursor_missing"] = json!(i.missing);
            if i.overflow() > 0 {
                report["boundary_overflow"] = json!(i.overflow());
            }
            if let Some(p) = i.proposal() {
                report[weir_core::watermark::OUTPUT_KEY] = p;
            }
        }
        Ok(report)
    }

    /// Collects from the API sources: the resource once, or once per parent record.
    async fn collect_apis(
        &self,
        task: &TaskContext,
        resource: &Resource<'_>,
        landing: &Arc<std::sync::Mutex<Landing>>,
        dir: &std::path::Path,
        start: Start,
    ) -> Result<(Tally, u64), CollectError> {
        let Some(spec) = &resource.step.parent else {
            return Ok((self.pages(resource, None, landing, &task.cancel, start).await?, 0));
        };
        let n = spec.parallel.unwrap_or(DEFAULT_PARENT_PARALLEL) as usize;
        let rx = parent::open(task, &self.staging, spec, &dir.join(".parent"), n * 2).await?;
        let records = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let cancel = &task.cancel;
        let mut runs = std::pin::pin!(records
            .map(|p| async move {
                let p = p?;
                self.pages(resource, Some(&p), landing, cancel, Start::default()).await
            })
            .buffer_unordered(n));
        let (mut tally, mut parents) = (Tally::default(), 0u64);
        while let Some(t) = runs.next().await {
            tally.add(t?);
            parents += 1;
        }
        Ok((tally, parents))
    }

    /// Reads the whole resource from a files fallback: each file (in path order) a page.
    async fn collect_files(
        &self,
        r: &Resource<'_>,
        f: &FallbackSpec,
        src: usize,
        landing: &Arc<std::sync::Mutex<Landing>>,
        dir: &std::path::Path,
        cancel: &CancellationToken,
    ) -> Result<Tally, CollectError> {
        let Some(spec) = &f.location else { return Ok(Tally::default()) };
        let storage = |e: weir_storage::StorageError| {
            let m = format!("{}: {e}", f.describe(src));
            if e.is_retryable() {
                CollectError::Transient(m)
            } else {
                CollectError::Config(m)
            }
        };
        let loc = weir_storage::Location::open(spec).map_err(storage)?;
        let all = vec!["**/*".to_string()];
        let patterns =
            weir_storage::Patterns::new(if f.patterns.is_empty() { &all } else { &f.patterns }).map_err(storage)?;
        let mut listed = loc.list(&patterns).await.map_err(storage)?;
        listed.sort_by(|a, b| a.path.cmp(&b.path));
        let mut tally = Tally::default();
        for file in listed {
            if cancel.is_cancelled() {
                return Err(CollectError::Cancelled);
            }
            let dest = dir.join(".fallback-file");
            let got = loc.download(&file.path, &dest, 8 << 20).await.map_err(storage)?;
            tally.stats.bytes += got.size;
            let body = Body::File { path: dest, len: got.size };
            let shown = loc.uri_of(&file.path);
            let (_, read, kept) = self.land(r, body, shown, src, landing, Arc::new(vec![]), cancel).await?;
            tally.page(src, read, kept);
        }
        Ok(tally)
    }

    /// Takes one page's records into the landing, off the async threads (parsing a
    /// large page takes a while): what [`take`] returns.
    #[allow(clippy::too_many_arguments)]
    async fn land(
        &self,
        r: &Resource<'_>,
        body: Body,
        shown: String,
        src: usize,
        landing: &Arc<std::sync::Mutex<Landing>>,
        extra: Arc<Vec<(String, Value)>>,
        cancel: &CancellationToken,
    ) -> Result<(Option<Value>, u64, u64), CollectError> {
        let step = r.step;
        let max_page_bytes = step.max_page_bytes.unwrap_or(DEFAULT_MAX_PAGE_BYTES);
        let (format, sel, cancel, land) = (step.format, r.selector.clone(), cancel.clone(), landing.clone());
        tokio::task::spawn_blocking(move || {
            let mut land = land.lock().unwrap_or_else(|p| p.into_inner());
            land.out.source(src)?;
            take(&mut land, &body, format, &sel, max_page_bytes, &shown, &extra, &cancel)
        })
        .await
        .map_err(|e| CollectError::Staging(format!("reading a page: {e}")))?
    }

    /// Collects one resource (for one parent record, if it has a parent) page by page,
    /// from the first API source whose circuit is not open.
    async fn pages(
        &self,
        r: &Resource<'_>,
        parent: Option<&Value>,
        landing: &Arc<std::sync::Mutex<Landing>>,
        cancel: &CancellationToken,
        start: Start,
    ) -> Result<Tally, CollectError> {
        let step = r.step;
        let values = Values { cursor: r.cursor.clone(), parent: parent.cloned() };
        let which = || parent.map(|p| format!(" (parent record {})", short(p))).unwrap_or_default();
        let mut req = first_request(r, &values).map_err(|e| match e {
            CollectError::BadPage(m) => CollectError::BadPage(format!("{m}{}", which())),
            other => other,
        })?;
        let extra: Arc<Vec<(String, Value)>> = Arc::new(match (&step.parent, parent) {
            (Some(spec), Some(p)) => parent::included(spec, p),
            _ => vec![],
        });
        // Each run of the loop spools large bodies to a file of its own (parents run at once).
        let n = r.spools.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let effort = Effort { spool: r.effort.spool.with_file_name(format!(".page-{n}")), ..r.effort.clone() };
        let mut paginator = paginate::build(&step.paginator)?;
        let mut url = paginator.first(req.url.clone());
        let mut tally = Tally::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut src = 0usize;
        if start.source > 0 && start.source < r.sources.len() {
            url = rebase(&url, &r.sources[0].base_url, &r.sources[start.source].base_url)?;
            src = start.source;
        }
        if let Some(saved) = start.resumed {
            url = Url::parse(&saved.next).map_err(|e| CollectError::Staging(format!("checkpoint: {e}")))?;
            paginator.resume(&url);
            src = saved.source.min(r.sources.len() - 1);
            tracing::info!(api = %step.api, pages = saved.tally.pages(), next = %url, "resuming from a checkpoint");
            seen = saved.seen.iter().cloned().collect();
            tally = saved.tally;
            // The staged files moved into this attempt: say so at once, so a crash before
            // the next page still resumes.
            if let Some(ck) = &start.checkpoints {
                self.checkpoint(ck, landing, &url, src, &seen, &tally, true).await?;
            }
        }
        loop {
            if cancel.is_cancelled() {
                return Err(CollectError::Cancelled);
            }
            seen.insert(url.to_string());
            req.url = url.clone();
            let page = match r.sources[src].api.fetch(&req, &effort, cancel, &mut tally.stats).await {
                Ok(p) => p,
                Err(e) if src + 1 < r.sources.len() && circuit_gone(&e, &r.sources[src]) => {
                    let next = src + 1;
                    tracing::warn!(api = %step.api, from = %r.sources[src].label, to = %r.sources[next].label, error = %e, "falling back");
                    url = rebase(&url, &r.sources[src].base_url, &r.sources[next].base_url)?;
                    tally.degraded = Some((next, e.to_string()));
                    src = next;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let shown = client::shown(&url, &[]);
            let headers_seen = page.headers;
            let (doc, read, kept) = self.land(r, page.body, shown, src, landing, extra.clone(), cancel).await?;
            tally.page(src, read, kept);
            let more =
                r.has_more.as_ref().and_then(|p| paginate::select(p, doc.as_ref())).map(|v| v.as_bool() != Some(false));
            if more == Some(false) || step.max_pages.is_some_and(|m| tally.pages() >= m) {
                break;
            }
            let next =
                paginator.next(&Page { url: &url, headers: &headers_seen, json: doc.as_ref(), records: read })?;
            let Some(next) = next else { break };
            if seen.contains(next.as_str()) {
                return Err(CollectError::BadPage(format!(
                    "api {}: page {} leads back to {next}, which was requested already: the pagination would not end{}",
                    step.api,
                    tally.pages(),
                    which()
                )));
            }
            if let Some(ck) = &start.checkpoints {
                self.checkpoint(ck, landing, &next, src, &seen, &tally, false).await?;
            }
            url = next;
        }
        Ok(tally)
    }

    /// Seals the staged files and writes a checkpoint, if one is due (or `force`).
    #[allow(clippy::too_many_arguments)]
    async fn checkpoint(
        &self,
        ck: &Arc<Checkpoints>,
        landing: &Arc<std::sync::Mutex<Landing>>,
        next: &Url,
        src: usize,
        seen: &HashSet<String>,
        tally: &Tally,
        force: bool,
    ) -> Result<(), CollectError> {
        let filled = landing.lock().unwrap_or_else(|p| p.into_inner()).out.filled();
        if !force && !ck.due(filled) {
            return Ok(());
        }
        let mut saved = Saved {
            fence: 0,
            config: String::new(),
            next: next.to_string(),
            source: src,
            parts: vec![],
            // A very long pagination's URLs would make every checkpoint large: past
            // MAX_SAVED_URLS a resumed attempt detects loops among the pages after it only.
            seen: if seen.len() <= checkpoint::MAX_SAVED_URLS { seen.iter().cloned().collect() } else { vec![] },
            tally: tally.clone(),
            incremental: None,
        };
        let (land, ck) = (landing.clone(), ck.clone());
        tokio::task::spawn_blocking(move || {
            let mut l = land.lock().unwrap_or_else(|p| p.into_inner());
            saved.parts = l.out.seal()?;
            saved.incremental = l.incremental.as_ref().map(Incremental::state);
            let filled = l.out.filled();
            drop(l);
            ck.write(saved, filled)
        })
        .await
        .map_err(|e| CollectError::Staging(format!("checkpointing: {e}")))?
    }
}

/// Where a recovery starts: the failed collection's newest checkpoint (its staged files and
/// next request, moved to the chosen source), or its first page at the chosen source.
pub(crate) struct Adopt {
    pub(crate) saved: Option<Saved>,
    pub(crate) source: usize,
}

/// Where one resource's collection starts: from its first page, or from an earlier
/// attempt's checkpoint; and where it checkpoints (none for a child resource).
#[derive(Default)]
pub(crate) struct Start {
    checkpoints: Option<Arc<Checkpoints>>,
    resumed: Option<Saved>,
    /// The API source to start from when nothing is resumed (a recovery's chosen one).
    source: usize,
}

/// The first request of a resource with these values (before the paginator's
/// parameters): the primary's URL with the path and parameters filled, the headers and
/// the body.
pub(crate) fn first_request(r: &Resource<'_>, values: &Values) -> Result<Request, CollectError> {
    let step = r.step;
    let bad = |field: &str, e: String| CollectError::BadPage(format!("{field}: {e}"));
    let path = r.path.render_with(values, &path_segment).map_err(|e| bad("path", e))?;
    let base = format!("{}{}", r.sources[0].base_url.trim_end_matches('/'), path);
    let mut url = Url::parse(&base).map_err(|e| CollectError::Config(format!("{base:?} is not a URL: {e}")))?;
    if !r.params.is_empty() {
        let mut pairs = Vec::with_capacity(r.params.len());
        for (k, t) in &r.params {
            pairs.push((k.clone(), t.render(values).map_err(|e| bad(&format!("params.{k}"), e))?));
        }
        url.query_pairs_mut().extend_pairs(pairs);
    }
    let mut headers = Vec::with_capacity(r.headers.len());
    for (k, t) in &r.headers {
        headers.push((k.clone(), t.render(values).map_err(|e| bad(&format!("headers.{k}"), e))?));
    }
    let body = match &step.body {
        Some(b) => Some(template::map_json(b, &|t| t.render(values)).map_err(|e| bad("body", e))?),
        None => None,
    };
    Ok(Request { post: step.method == HttpMethod::Post, url, headers, body })
}

/// How source `i` of a step is named in reports, events and logs (0: the primary).
fn source_label(step: &CollectStep, i: usize) -> String {
    match i {
        0 => "primary".to_string(),
        i => step.fallbacks.get(i - 1).map(|f| f.describe(i)).unwrap_or_default(),
    }
}

/// One API source of a resource: the primary, or a fallback.
pub(crate) struct Source {
    pub(crate) api: Arc<Api>,
    pub(crate) base_url: String,
    pub(crate) label: String,
}

/// Whether a source's failure means its circuit is open (refused at once, or opened by
/// the failures of this request).
pub(crate) fn circuit_gone(e: &CollectError, s: &Source) -> bool {
    matches!(e, CollectError::CircuitOpen(_)) || (matches!(e, CollectError::Transient(_)) && s.api.breaker().is_open())
}

/// A request of one source moved to another: its base URL swapped (or, for a next URL
/// elsewhere, its scheme, host and port).
pub(crate) fn rebase(url: &Url, from: &str, to: &str) -> Result<Url, CollectError> {
    let (f, t) = (from.trim_end_matches('/'), to.trim_end_matches('/'));
    let bad = |e: url::ParseError| CollectError::Config(format!("fallback base_url {to:?}: {e}"));
    if let Some(rest) = url.as_str().strip_prefix(f) {
        return Url::parse(&format!("{t}{rest}")).map_err(bad);
    }
    let target = Url::parse(t).map_err(bad)?;
    let mut u = url.clone();
    let ok = u.set_scheme(target.scheme()).is_ok()
        && u.set_host(target.host_str()).is_ok()
        && u.set_port(target.port()).is_ok();
    if !ok {
        return Err(CollectError::Config(format!("cannot move {url} to the fallback {to}")));
    }
    Ok(u)
}

/// What one resource request needs, the same for every parent record.
pub(crate) struct Resource<'a> {
    pub(crate) step: &'a CollectStep,
    /// The primary, then the API fallbacks in order.
    pub(crate) sources: Vec<Source>,
    pub(crate) selector: Arc<Selector>,
    pub(crate) has_more: Option<serde_json_path::JsonPath>,
    pub(crate) effort: Effort,
    pub(crate) path: Template,
    pub(crate) headers: Vec<(String, Template)>,
    pub(crate) params: Vec<(String, Template)>,
    /// What `{cursor}` sends: the stored mark, else the initial value.
    pub(crate) cursor: Option<String>,
    /// Numbers the spool files of concurrent loops.
    pub(crate) spools: std::sync::atomic::AtomicU64,
}

/// Counts of a collection (or of one parent's part of it); a checkpoint keeps them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Tally {
    /// Records on the pages.
    read: u64,
    stats: Stats,
    /// Pages and staged records (read less those collected before) per source (0: the
    /// primary).
    by_source: std::collections::BTreeMap<usize, (u64, u64)>,
    /// The furthest fallback it went to, and why.
    degraded: Option<(usize, String)>,
}

impl Tally {
    pub(crate) fn pages(&self) -> u64 {
        self.by_source.values().map(|(p, _)| p).sum()
    }

    fn kept(&self) -> u64 {
        self.by_source.values().map(|(_, k)| k).sum()
    }

    /// One page from source `src`: `read` records on it, `kept` of them staged.
    fn page(&mut self, src: usize, read: u64, kept: u64) {
        self.read += read;
        let e = self.by_source.entry(src).or_default();
        e.0 += 1;
        e.1 += kept;
    }

    fn add(&mut self, o: Tally) {
        self.read += o.read;
        self.stats.requests += o.stats.requests;
        self.stats.retried += o.stats.retried;
        self.stats.bytes += o.stats.bytes;
        for (s, (p, k)) in o.by_source {
            let e = self.by_source.entry(s).or_default();
            e.0 += p;
            e.1 += k;
        }
        if o.degraded.as_ref().map(|d| d.0) > self.degraded.as_ref().map(|d| d.0) {
            self.degraded = o.degraded;
        }
    }
}

/// Where a collection's records land: past the incremental filter, with the parent's
/// fields, into the staged files.
struct Landing {
    out: Output,
    incremental: Option<Incremental>,
}

impl Landing {
    /// Stages a record unless it was collected before; whether it was staged.
    fn record(&mut self, r: &Value, extra: &[(String, Value)], url: &str) -> Result<bool, CollectError> {
        if let Some(i) = self.incremental.as_mut() {
            if !i.keep(r, url)? {
                return Ok(false);
            }
        }
        if extra.is_empty() {
            self.out.record(r)?;
        } else {
            let mut r = r.clone();
            if let Value::Object(m) = &mut r {
                for (k, v) in extra {
                    m.insert(k.clone(), v.clone());
                }
            }
            self.out.record(&r)?;
        }
        Ok(true)
    }
}

/// A value put into a URL path: percent-encoded but for RFC 3986's unreserved characters,
/// so a parent's `a/b` stays one segment.
fn path_segment(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A record, short, for messages.
fn short(v: &Value) -> String {
    weir_core::text::shorten(v.to_string(), 120)
}

/// Takes one page's records into `land`: the document the paginator reads (a JSON page's,
/// less its records when it streamed), how many records the page held and how many were
/// staged.
#[allow(clippy::too_many_arguments)]
fn take(
    land: &mut Landing,
    body: &Body,
    format: BodyFormat,
    selector: &Selector,
    max_page_bytes: u64,
    url: &str,
    extra: &[(String, Value)],
    cancel: &CancellationToken,
) -> Result<(Option<Value>, u64, u64), CollectError> {
    let reader = || body.reader().map_err(|e| CollectError::Staging(format!("reading the page of {url}: {e}")));
    let mut kept = 0u64;
    let mut emit = |r: &Value| {
        if cancel.is_cancelled() {
            return Err(CollectError::Cancelled);
        }
        if land.record(r, extra, url)? {
            kept += 1;
        }
        Ok(())
    };
    let (doc, read) = match (format, selector) {
        (BodyFormat::Json, Selector::Members { names, each }) => {
            let (doc, n) = records::json_stream(reader()?, names, *each, url, &mut emit)?;
            (Some(doc), n)
        }
        (BodyFormat::Json, Selector::Query(path)) => {
            let whole = body.bytes(max_page_bytes).map_err(|len| {
                CollectError::BadPage(format!(
                    "{url}: the page is {len} bytes, over max_page_bytes ({max_page_bytes}) for a records path \
                     read on the whole page; a path of member names (like $.data[*]) streams pages of any size"
                ))
            })?;
            let (doc, recs) = records::json(&whole, path, url)?;
            for r in &recs {
                emit(r)?;
            }
            (Some(doc), recs.len() as u64)
        }
        (BodyFormat::Ndjson, _) => (None, records::ndjson(reader()?, url, &mut emit)?),
        (BodyFormat::Csv, _) => {
            let n = land.out.csv(reader()?, url)?;
            return Ok((None, n, n));
        }
    };
    Ok((doc, read, kept))
}

#[async_trait]
impl StepHandler for Collect {
    fn kinds(&self) -> &'static [&'static str] {
        &API_KINDS
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let step = CollectStep::parse(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
        let report = match task.kind.as_str() {
            "probe" => self.probe(task, &step).await?,
            "connect" => self.connect(task, &step).await?,
            "check_security" => self.check_security(&step).await?,
            "check_tls" => self.check_tls(&step).await?,
            _ => self.collect(task, &step, None).await?,
        };
        weir_worker::report::publish(report, &self.staging, task).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_in_a_path_stays_one_segment() {
        assert_eq!(path_segment("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
        assert_eq!(path_segment("v1.2-x_~"), "v1.2-x_~");
        assert_eq!(short(&json!({"k": "x".repeat(300)})).chars().count(), 121);
    }
}
