//! The `collect` kind: a resource page by page into staged files.
//!
//! Each attempt requests the first page, selects its records, writes them to bounded
//! staged files, asks the paginator for the next page, and so on until the last page,
//! `has_more` reading false, or `max_pages`; a next page it has requested before is an
//! error naming it (the same cursor twice would never end). The report counts pages,
//! records, requests, retries and bytes, and lists each staged file with its records, for
//! `convert` to take (`source` is the file's identity in the sinks).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use url::Url;
use weir_core::api::{
    BodyFormat, CollectStep, HttpMethod, DEFAULT_MAX_PAGE_BYTES, DEFAULT_MAX_RETRIES, DEFAULT_RECORDS_PER_FILE,
};
use weir_core::catalog::API_KINDS;
use weir_worker::notice::Notices;
use weir_worker::quota::Quotas;
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::breaker::Breaker;
use crate::client::{self, Api, Body, Effort, Request, Stats};
use crate::error::CollectError;
use crate::output::Output;
use crate::paginate::{self, Page};
use crate::records::{self, Selector};
use crate::ApiSettings;

/// Runs `collect`, holding each API's client, credentials and limits across tasks.
pub struct Collect {
    settings: ApiSettings,
    staging: weir_worker::staging::Staging,
    /// By API name and the auth it was made with.
    apis: Mutex<HashMap<String, Arc<Api>>>,
    /// By API name: one circuit whatever auth a step uses.
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    /// The fleet-wide buckets, shared over the heartbeat.
    quotas: Quotas,
    /// Circuit changes, for `weir.apis`.
    notices: Notices,
}

impl Collect {
    pub fn new(settings: ApiSettings, quotas: Quotas, notices: Notices) -> Collect {
        Collect {
            staging: settings.staging(),
            settings,
            apis: Mutex::default(),
            breakers: Mutex::default(),
            quotas,
            notices,
        }
    }

    /// The API a step names, made on first use (its credentials read then).
    async fn api(&self, step: &CollectStep) -> Result<Arc<Api>, CollectError> {
        let key = format!("{} {}", step.api, serde_json::to_string(&step.auth).unwrap_or_default());
        let mut apis = self.apis.lock().await;
        if let Some(a) = apis.get(&key) {
            return Ok(a.clone());
        }
        let http = client::http_client()?;
        let auth = match &step.auth {
            Some(spec) => Some(crate::auth::build(spec, &step.api, &http, &self.settings.data_dir)?),
            None => None,
        };
        let (own, all) = (self.settings.rate_of(&step.api), self.settings.global_rate);
        let limits = [
            self.quotas.bucket(&crate::quota_key(&step.api), own.per_minute, own.burst),
            self.quotas.bucket(crate::GLOBAL_QUOTA_KEY, all.per_minute, all.burst),
        ]
        .into_iter()
        .flatten()
        .collect();
        let breaker = self
            .breakers
            .lock()
            .await
            .entry(step.api.clone())
            .or_insert_with(|| {
                Arc::new(Breaker::new(&step.api, self.settings.circuit_of(&step.api), self.notices.clone()))
            })
            .clone();
        let api = Arc::new(Api::new(&step.api, http, auth, limits, breaker));
        apis.insert(key, api.clone());
        Ok(api)
    }

    async fn collect(&self, task: &TaskContext, step: &CollectStep) -> Result<Value, CollectError> {
        let api = self.api(step).await?;
        let selector = Arc::new(Selector::parse(&step.records)?);
        let max_page_bytes = step.max_page_bytes.unwrap_or(DEFAULT_MAX_PAGE_BYTES);
        let has_more = step.has_more.as_deref().map(|p| paginate::json_path("has_more", p)).transpose()?;
        let mut paginator = paginate::build(&step.paginator)?;
        let base = format!("{}{}", step.base_url.trim_end_matches('/'), step.path);
        let mut url = Url::parse(&base).map_err(|e| CollectError::Config(format!("{base:?} is not a URL: {e}")))?;
        if !step.params.is_empty() {
            url.query_pairs_mut().extend_pairs(step.params.iter());
        }
        let mut url = paginator.first(url);
        let headers: Vec<(String, String)> = step.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let dir = self.staging.dir(task).join(format!("attempt-{}", task.fence));
        let mut out = Output::new(&dir, step.records_per_file.unwrap_or(DEFAULT_RECORDS_PER_FILE))?;
        let effort = Effort {
            max_attempts: step.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            timeout: step.timeout(),
            spool: dir.join(".page"),
        };
        let mut stats = Stats::default();
        let mut seen: HashSet<String> = HashSet::new();
        let (mut pages, mut total) = (0u64, 0u64);
        loop {
            if task.cancel.is_cancelled() {
                return Err(CollectError::Cancelled);
            }
            seen.insert(url.to_string());
            let req = Request {
                post: step.method == HttpMethod::Post,
                url: url.clone(),
                headers: headers.clone(),
                body: step.body.clone(),
            };
            let page = api.fetch(&req, &effort, &task.cancel, &mut stats).await?;
            pages += 1;
            let shown = client::shown(&url, &[]);
            // Parsing a large page takes a while: off the async threads.
            let (format, sel, cancel) = (step.format, selector.clone(), task.cancel.clone());
            let body = page.body;
            let (back, taken) = tokio::task::spawn_blocking(move || {
                let r = take(&mut out, &body, format, &sel, max_page_bytes, &shown, &cancel);
                (out, r)
            })
            .await
            .map_err(|e| CollectError::Staging(format!("reading a page: {e}")))?;
            out = back;
            let (doc, n) = taken?;
            total += n;
            let more =
                has_more.as_ref().and_then(|p| paginate::select(p, doc.as_ref())).map(|v| v.as_bool() != Some(false));
            if more == Some(false) || step.max_pages.is_some_and(|m| pages >= m) {
                break;
            }
            let next = paginator.next(&Page { url: &url, headers: &page.headers, json: doc.as_ref(), records: n })?;
            let Some(next) = next else { break };
            if seen.contains(next.as_str()) {
                return Err(CollectError::BadPage(format!(
                    "api {}: page {} leads back to {next}, which was requested already: the pagination would not end",
                    step.api, pages
                )));
            }
            url = next;
        }
        let parts = out.finish()?;
        let mut files = Vec::with_capacity(parts.len());
        for p in &parts {
            let path = self
                .staging
                .leave(task, &p.path, &format!("attempt-{}/{}", task.fence, p.name))
                .await
                .map_err(|e| CollectError::Staging(e.message))?;
            files.push(json!({
                "path": path,
                "source": format!("api://{}/{}/{}/{}", step.api, task.job_id, task.step_id, p.name),
                "records": p.records,
            }));
        }
        tracing::info!(api = %step.api, pages, records = total, requests = stats.requests, "collected");
        Ok(json!({
            "kind": "collect",
            "api": step.api,
            "resource": client::shown(&Url::parse(&base).map_err(|e| CollectError::Config(e.to_string()))?, &[]),
            "paginator": step.paginator.name(),
            "pages": pages,
            "records": total,
            "requests": stats.requests,
            "retried": stats.retried,
            "bytes": stats.bytes,
            "files": files,
        }))
    }
}

/// Takes one page's records into `out`: the document the paginator reads (a JSON page's,
/// less its records when it streamed) and how many records.
fn take(
    out: &mut Output,
    body: &Body,
    format: BodyFormat,
    selector: &Selector,
    max_page_bytes: u64,
    url: &str,
    cancel: &CancellationToken,
) -> Result<(Option<Value>, u64), CollectError> {
    let reader = || body.reader().map_err(|e| CollectError::Staging(format!("reading the page of {url}: {e}")));
    let mut emit = |r: &Value| {
        if cancel.is_cancelled() {
            return Err(CollectError::Cancelled);
        }
        out.record(r)
    };
    match (format, selector) {
        (BodyFormat::Json, Selector::Members { names, each }) => {
            let (doc, n) = records::json_stream(reader()?, names, *each, url, &mut emit)?;
            Ok((Some(doc), n))
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
            Ok((Some(doc), recs.len() as u64))
        }
        (BodyFormat::Ndjson, _) => Ok((None, records::ndjson(reader()?, url, &mut emit)?)),
        (BodyFormat::Csv, _) => Ok((None, out.csv(reader()?, url)?)),
    }
}

#[async_trait]
impl StepHandler for Collect {
    fn kinds(&self) -> &'static [&'static str] {
        &API_KINDS
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let step = CollectStep::parse(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
        let report = self.collect(task, &step).await?;
        weir_worker::report::publish(report, &self.staging, task).await
    }
}
