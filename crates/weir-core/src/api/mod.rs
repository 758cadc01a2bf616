//! What an api step's config says: the resource to collect, how its pages follow one
//! another, where its records are, and how to authenticate. Pure data and its
//! validation, so the master refuses a bad config at submission and the API manager
//! reads the same struct; the work itself lives in `weir-api-manager`.
//!
//! The api kinds (see [`crate::catalog`]), each configured with a [`CollectStep`]:
//! - `collect`: requests a resource page by page, selects its records, and leaves them
//!   in staging as bounded NDJSON files (or the CSV bodies as they came) that the batch
//!   kinds `convert`/`quality`/`store` take unchanged.
//! - `probe`: resolves the credentials and requests the first page once, so a wrong URL
//!   or key fails before any work, naming the API.
//! - `connect`: obtains the credentials' token (OAuth2), reporting when it expires.
//!
//! [`template`] holds the placeholders a resource's values may carry; [`profile`] what a
//! deployment says about each API (limits, circuit), [`circuit`] the breaker itself.

pub mod circuit;
pub mod profile;
pub mod recovery;
pub mod security;
pub mod template;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::CredentialsRef;
use crate::sandbox::{Reach, Touch};
use template::{Template, Var};

/// Default most records in one staged file.
pub const DEFAULT_RECORDS_PER_FILE: u64 = 100_000;
/// Default largest JSON page held whole, for a records path that cannot stream.
pub const DEFAULT_MAX_PAGE_BYTES: u64 = 64 << 20;
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: &str = "30s";
/// Default attempts per request on 429, 5xx and connection errors.
pub const DEFAULT_MAX_RETRIES: u32 = 5;

/// A `collect` step's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectStep {
    /// The API the resource belongs to: rate limits, sessions, circuits and tokens are
    /// keyed by it (`[a-z0-9_-]`, e.g. `github`).
    pub api: String,
    /// `https://api.example.com` (or `http://`), without credentials.
    pub base_url: String,
    /// Appended to `base_url`; may hold placeholders.
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// Request headers (values may hold placeholders). Secrets go in `auth`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters (values may hold placeholders).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A JSON body (POST).
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    #[serde(default)]
    pub paginator: PaginatorSpec,
    /// An RFC 9535 JSONPath selecting the records of a JSON page (default `$`: the page
    /// itself; an array's items are each a record).
    #[serde(default = "whole_page")]
    pub records: String,
    /// The page's format: `json` (default), `ndjson` (a record a line) or `csv`.
    #[serde(default)]
    pub format: BodyFormat,
    /// Stop when this JSONPath reads `false` on a page (e.g. `$.has_more`).
    #[serde(default)]
    pub has_more: Option<String>,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
    /// Per request (default 30s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Attempts per request on 429, 5xx and connection errors (default 5).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Most records in one staged file (default 100,000).
    #[serde(default)]
    pub records_per_file: Option<u64>,
    /// Largest JSON page held whole (default 64 MiB) for a records path other than member
    /// names, which streams pages of any size; a larger one fails, naming it.
    #[serde(default)]
    pub max_page_bytes: Option<u64>,
    /// Collect only what is new since the last successful run.
    #[serde(default)]
    pub incremental: Option<IncrementalSpec>,
    /// Run once per record of another `collect` step (`/users/{parent.id}/orders`).
    #[serde(default)]
    pub parent: Option<ParentSpec>,
    /// Sources to continue from, in order, while the API's circuit is open.
    #[serde(default)]
    pub fallbacks: Vec<FallbackSpec>,
    /// What every connection must be: HTTPS, allowed hosts, TLS version, CA and pins
    /// ([`security`]); absent = any http(s) URL, the system's CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<security::SecuritySpec>,
}

/// Most fallbacks a resource may name.
pub const MAX_FALLBACKS: usize = 5;

/// A source a collection continues from while the ones before it have their circuits
/// open: the same resource at another base URL or with other credentials (same path,
/// parameters and paginator; its own circuit), or files holding its records (an export,
/// read with the step's `format` and `records`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    /// Another base URL (default: the primary's).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Other credentials (default: the primary's).
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Files instead of an API: the whole resource is read from them.
    #[serde(default)]
    pub location: Option<crate::files::LocationSpec>,
    /// Which of the location's files (default all).
    #[serde(default)]
    pub patterns: Vec<String>,
}

impl FallbackSpec {
    /// How the source is named in reports and events (no secrets).
    pub fn describe(&self, index: usize) -> String {
        match (&self.location, &self.base_url) {
            (Some(l), _) => format!("fallback {index} (files at {})", crate::files::redact_uri(&l.uri)),
            (None, Some(u)) => format!("fallback {index} ({u})"),
            (None, None) => format!("fallback {index} (other credentials)"),
        }
    }
}

/// Incremental collection: each record's cursor value is compared with the watermark the
/// last successful run stored (see [`crate::watermark`]); what lies at or before it is
/// skipped, and the highest value collected is proposed as the next mark, stored when the
/// job succeeds. `{cursor}` in the path, parameters, headers or body sends the mark (or
/// `initial`) to the server, so it sends only what is new.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalSpec {
    /// An RFC 9535 JSONPath on each record selecting its cursor (e.g. `$.updated_at`):
    /// a number or text; RFC 3339 times compare as instants.
    pub cursor_path: String,
    /// Where the first run starts (what `{cursor}` sends before any run stored a mark).
    #[serde(default)]
    pub initial: Option<Value>,
    /// The resource's name in the watermark's key `<job name>/<name>` (default: the step
    /// id), so renaming a step need not start over.
    #[serde(default)]
    pub name: Option<String>,
    /// A record without a cursor value: `fail` the step (default), or `include` it.
    #[serde(default)]
    pub on_missing: OnMissingCursor,
}

/// What a record without a cursor value does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingCursor {
    #[default]
    Fail,
    Include,
}

/// Most parents collected at once.
pub const MAX_PARENT_PARALLEL: u32 = 64;
/// Default parents collected at once.
pub const DEFAULT_PARENT_PARALLEL: u32 = 4;

/// A child resource: requested once per record of a parent `collect` step (one it
/// depends on), with `{parent.<field>}` filled from that record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentSpec {
    /// The parent step's id.
    pub step: String,
    /// Parent fields copied into each child record as `_<step>_<field>` (dlt's naming).
    #[serde(default)]
    pub include: Vec<String>,
    /// Parents collected at once (default 4, at most 64), within the API's limits.
    #[serde(default)]
    pub parallel: Option<u32>,
}

impl ParentSpec {
    /// The column a parent field is copied into.
    pub fn column(&self, field: &str) -> String {
        format!("_{}_{}", self.step, field.replace('.', "_"))
    }
}

fn whole_page() -> String {
    "$".into()
}

/// The HTTP methods a resource is requested with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
}

/// How a page is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    #[default]
    Json,
    Ndjson,
    Csv,
}

/// How requests authenticate. Secrets come by reference (`credentials: {env: PREFIX}`
/// or `{file: /run/secrets/x}`, as the file kinds'), never in the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// `<PREFIX>_API_KEY` sent in a header or a query parameter named `name`.
    ApiKey {
        name: String,
        #[serde(default)]
        location: KeyLocation,
        credentials: CredentialsRef,
    },
    /// `<PREFIX>_USERNAME` and `<PREFIX>_PASSWORD`.
    Basic { credentials: CredentialsRef },
    /// `<PREFIX>_TOKEN` as `Authorization: Bearer …`.
    Bearer { credentials: CredentialsRef },
    /// The client-credentials grant: `<PREFIX>_CLIENT_ID`, `<PREFIX>_CLIENT_SECRET`.
    Oauth2ClientCredentials {
        token_url: String,
        #[serde(default)]
        scopes: Vec<String>,
        credentials: CredentialsRef,
    },
    /// The refresh-token grant: `<PREFIX>_REFRESH_TOKEN` (the first one; a rotated one is
    /// kept by Weir), `<PREFIX>_CLIENT_ID` and `<PREFIX>_CLIENT_SECRET` if the server asks.
    Oauth2RefreshToken { token_url: String, credentials: CredentialsRef },
}

impl AuthSpec {
    /// The method's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            AuthSpec::ApiKey { .. } => "api_key",
            AuthSpec::Basic { .. } => "basic",
            AuthSpec::Bearer { .. } => "bearer",
            AuthSpec::Oauth2ClientCredentials { .. } => "oauth2_client_credentials",
            AuthSpec::Oauth2RefreshToken { .. } => "oauth2_refresh_token",
        }
    }
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyLocation {
    #[default]
    Header,
    Query,
}

/// How one page leads to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PaginatorSpec {
    /// One request.
    #[default]
    Single,
    /// The next page's URL is in the body at `path` (a JSONPath); none = the last page.
    NextUrl { path: String },
    /// The next page's URL is the `Link` header's `rel` (default `next`).
    LinkHeader {
        #[serde(default = "next")]
        rel: String,
    },
    /// A cursor read from the body (`path`, a JSONPath) or a response header (`header`),
    /// sent back as query parameter `param`; none = the last page.
    Cursor {
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        header: Option<String>,
        param: String,
    },
    /// `offset`/`limit` parameters; stops on a short or empty page, or at the total
    /// (`total_path`, a JSONPath) if given.
    Offset {
        limit: u64,
        #[serde(default = "offset")]
        offset_param: String,
        #[serde(default = "limit")]
        limit_param: String,
        #[serde(default)]
        start: u64,
        #[serde(default)]
        total_path: Option<String>,
    },
    /// A page number parameter; stops on an empty page, or at the page count
    /// (`total_pages_path`, a JSONPath) if given.
    PageNumber {
        #[serde(default = "page")]
        param: String,
        #[serde(default = "one")]
        start: u64,
        #[serde(default)]
        total_pages_path: Option<String>,
    },
}

fn next() -> String {
    "next".into()
}
fn offset() -> String {
    "offset".into()
}
fn limit() -> String {
    "limit".into()
}
fn page() -> String {
    "page".into()
}
fn one() -> u64 {
    1
}

impl PaginatorSpec {
    /// The paginator's name in messages and reports.
    pub fn name(&self) -> &'static str {
        match self {
            PaginatorSpec::Single => "single",
            PaginatorSpec::NextUrl { .. } => "next_url",
            PaginatorSpec::LinkHeader { .. } => "link_header",
            PaginatorSpec::Cursor { .. } => "cursor",
            PaginatorSpec::Offset { .. } => "offset",
            PaginatorSpec::PageNumber { .. } => "page_number",
        }
    }
}

/// Fills the `{params.…}` placeholders of a collect config with the job's parameters, at
/// submission (the stored spec holds the values); the error names the field and the
/// parameter. Other placeholders are left for the collection.
pub fn bind_params(config: &mut Value, params: Option<&Value>) -> Result<(), String> {
    let Some(obj) = config.as_object_mut() else { return Ok(()) };
    let strict = |field: &str, text: &str| -> Result<String, String> {
        let t = Template::parse(text).map_err(|e| format!("{field}: {e}"))?;
        if !t.vars().any(|v| matches!(v, Var::Param(_))) {
            return Ok(text.to_string());
        }
        Ok(t.bind_params(params).map_err(|e| format!("{field}: {e}"))?.to_string())
    };
    for field in ["base_url", "path"] {
        if let Some(Value::String(s)) = obj.get_mut(field) {
            *s = strict(field, s)?;
        }
    }
    for map in ["headers", "params"] {
        if let Some(Value::Object(m)) = obj.get_mut(map) {
            for (k, v) in m.iter_mut() {
                if let Value::String(s) = v {
                    *s = strict(&format!("{map}.{k}"), s)?;
                }
            }
        }
    }
    if let Some(Value::Array(fs)) = obj.get_mut("fallbacks") {
        for (i, f) in fs.iter_mut().enumerate() {
            if let Some(Value::String(s)) = f.get_mut("base_url") {
                *s = strict(&format!("fallbacks[{i}].base_url"), s)?;
            }
        }
    }
    if let Some(Value::String(s)) = obj.get_mut("incremental").and_then(|i| i.get_mut("initial")) {
        *s = strict("incremental.initial", s)?;
    }
    if let Some(b) = obj.get_mut("body") {
        *b = template::map_json(b, &|t| t.bind_params(params).map(|t| t.to_string()))
            .map_err(|e| format!("body: {e}"))?;
    }
    Ok(())
}

/// Checks an RFC 9535 JSONPath; the error names the field and says what is wrong.
pub fn check_json_path(field: &str, path: &str) -> Result<(), String> {
    serde_json_path::JsonPath::parse(path).map(|_| ()).map_err(|e| format!("{field} {path:?} is not a JSONPath: {e}"))
}

/// The endpoint a request to `base` + `path` goes to (the API manager joins them as
/// `base` without its trailing `/`, then `path`). When `path` changes the authority (a
/// `path` of `@other.host/…`), the field is `<field> + path` and the host the joined one;
/// a placeholder left in it makes a host no policy accepts.
fn request_touch(field: &str, base: &str, path: &str) -> Touch {
    let joined = format!("{}{path}", base.trim_end_matches('/'));
    let touch = Touch::url(field, &joined);
    if touch == Touch::url(field, base) {
        touch
    } else {
        Touch::url(format!("{field} + path"), &joined)
    }
}

/// Checks an http(s) URL without credentials in it.
pub(crate) fn check_url(field: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{field} {url:?} must be an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{field} {url:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!("{field} {url:?} holds credentials: give them by reference in auth"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{field} {url:?} holds white space or control characters"));
    }
    Ok(())
}

/// Checks a credentials reference; the error names `field`.
pub(crate) fn check_credentials(field: &str, c: &CredentialsRef) -> Result<(), String> {
    match c {
        CredentialsRef::Env(p) if !crate::validate::is_env_name(p) => Err(format!(
            "{field}.env must name an environment variable prefix, got {p:?} ({})",
            crate::validate::ENV_NAME_RULE
        )),
        CredentialsRef::File(p) if p.is_empty() || p.contains('\0') => {
            Err(format!("{field}.file must name a file, got {p:?}"))
        }
        _ => Ok(()),
    }
}

fn check_auth(field: &str, a: &AuthSpec) -> Result<(), String> {
    match a {
        AuthSpec::ApiKey { name, credentials, .. } => {
            check_token(&format!("{field}.name"), name)?;
            check_credentials(&format!("{field}.credentials"), credentials)
        }
        AuthSpec::Basic { credentials } | AuthSpec::Bearer { credentials } => {
            check_credentials(&format!("{field}.credentials"), credentials)
        }
        AuthSpec::Oauth2ClientCredentials { token_url, credentials, .. }
        | AuthSpec::Oauth2RefreshToken { token_url, credentials } => {
            check_url(&format!("{field}.token_url"), token_url)?;
            check_credentials(&format!("{field}.credentials"), credentials)
        }
    }
}

/// An HTTP header or parameter name: visible ASCII, no separators.
fn check_token(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) {
        return Err(format!("{field} {name:?} is not a valid name"));
    }
    Ok(())
}

impl CollectStep {
    /// Reads and checks a `collect` step's config; the error names the field.
    pub fn parse(config: Option<&Value>) -> Result<CollectStep, String> {
        let Some(v) = config else {
            return Err("collect config: give at least api and base_url".into());
        };
        let step: CollectStep = serde_json::from_value(v.clone()).map_err(|e| format!("collect config: {e}"))?;
        step.check().map_err(|e| format!("collect config: {e}"))?;
        Ok(step)
    }

    fn check(&self) -> Result<(), String> {
        crate::validate::check_name("api", &self.api, 64).map_err(|e| e.0)?;
        check_url("base_url", &self.base_url)?;
        if Template::parse(&self.base_url).map_err(|e| format!("base_url: {e}"))?.vars().next().is_some() {
            return Err("base_url: only {params.…} placeholders (filled at submission) may be in base_url".into());
        }
        for k in self.headers.keys() {
            check_token("headers name", k)?;
        }
        // Each placeholder names what this step collects with.
        for (field, t) in self.templates()? {
            for v in t.vars() {
                match v {
                    Var::Cursor => match &self.incremental {
                        None => return Err(format!("{field}: {{cursor}} needs incremental")),
                        Some(i) if i.initial.is_none() => {
                            return Err(format!(
                                "{field}: {{cursor}} needs incremental.initial (what the first run sends)"
                            ))
                        }
                        Some(_) => {}
                    },
                    Var::Parent(_) if self.parent.is_none() => {
                        return Err(format!("{field}: {{parent.…}} needs parent (the step whose records it reads)"))
                    }
                    Var::Param(p) => {
                        return Err(format!(
                            "{field}: {{params.{}}} names a parameter the job does not give",
                            p.join(".")
                        ))
                    }
                    Var::Parent(_) => {}
                }
            }
        }
        if let Some(i) = &self.incremental {
            check_json_path("incremental.cursor_path", &i.cursor_path)?;
            if let Some(n) = &i.name {
                crate::validate::check_name("incremental.name", n, 64).map_err(|e| e.0)?;
            }
            if matches!(&i.initial, Some(v) if !(v.is_string() || v.is_number())) {
                return Err("incremental.initial must be a number or text".into());
            }
            if self.format == BodyFormat::Csv {
                return Err("incremental reads each record's cursor: give JSON or NDJSON pages, not CSV".into());
            }
            if self.max_pages.is_some() {
                return Err("incremental with max_pages would move the mark past the pages it did not fetch: \
                            leave max_pages out, or narrow the window with params"
                    .into());
            }
        }
        if let Some(p) = &self.parent {
            crate::validate::check_step_id(&p.step).map_err(|e| format!("parent.step: {}", e.0))?;
            if !p.include.is_empty() && self.format == BodyFormat::Csv {
                return Err("parent.include adds columns to each record: give JSON or NDJSON pages, not CSV".into());
            }
            if p.include.iter().any(|f| f.is_empty() || f.split('.').any(str::is_empty)) {
                return Err("parent.include: name each field (a.b for a nested one)".into());
            }
            if let Some(n) = p.parallel {
                if n == 0 || n > MAX_PARENT_PARALLEL {
                    return Err(format!("parent.parallel must be 1..={MAX_PARENT_PARALLEL}, got {n}"));
                }
            }
        }
        check_json_path("records", &self.records)?;
        if self.format != BodyFormat::Json && self.records != "$" {
            return Err(format!("records selects from JSON pages; a {:?} page's rows are its records", self.format));
        }
        if let Some(p) = &self.has_more {
            check_json_path("has_more", p)?;
        }
        match &self.paginator {
            PaginatorSpec::Single | PaginatorSpec::LinkHeader { .. } => {}
            PaginatorSpec::NextUrl { path } => check_json_path("paginator.path", path)?,
            PaginatorSpec::Cursor { path, header, param } => {
                match (path, header) {
                    (Some(p), None) => check_json_path("paginator.path", p)?,
                    (None, Some(h)) => check_token("paginator.header", h)?,
                    _ => return Err("paginator cursor: give path (in the body) or header, one of them".into()),
                }
                check_token("paginator.param", param)?;
            }
            PaginatorSpec::Offset { limit, offset_param, limit_param, total_path, .. } => {
                if *limit == 0 {
                    return Err("paginator offset: limit must be at least 1".into());
                }
                check_token("paginator.offset_param", offset_param)?;
                check_token("paginator.limit_param", limit_param)?;
                if let Some(p) = total_path {
                    check_json_path("paginator.total_path", p)?;
                }
            }
            PaginatorSpec::PageNumber { param, total_pages_path, .. } => {
                check_token("paginator.param", param)?;
                if let Some(p) = total_pages_path {
                    check_json_path("paginator.total_pages_path", p)?;
                }
            }
        }
        if self.paginator != PaginatorSpec::Single && self.format != BodyFormat::Json {
            if let PaginatorSpec::NextUrl { .. } | PaginatorSpec::Cursor { path: Some(_), .. } = self.paginator {
                return Err("paginator reads the next page from a JSON body; this resource's pages are not JSON".into());
            }
        }
        if let Some(a) = &self.auth {
            check_auth("auth", a)?;
        }
        if self.fallbacks.len() > MAX_FALLBACKS {
            return Err(format!("fallbacks: at most {MAX_FALLBACKS}, got {}", self.fallbacks.len()));
        }
        for (i, f) in self.fallbacks.iter().enumerate() {
            let at = format!("fallbacks[{i}]");
            match (&f.location, &f.base_url, &f.auth) {
                (Some(l), None, None) => l.check().map_err(|e| format!("{at}.location: {e}"))?,
                (Some(_), _, _) => {
                    return Err(format!("{at}: give location (files) or base_url/auth (an API), not both"))
                }
                (None, None, None) => return Err(format!("{at}: give base_url, auth or location")),
                (None, url, auth) => {
                    if !f.patterns.is_empty() {
                        return Err(format!("{at}.patterns apply to a location"));
                    }
                    if let Some(u) = url {
                        check_url(&format!("{at}.base_url"), u)?;
                        if Template::parse(u).map_err(|e| format!("{at}.base_url: {e}"))?.vars().next().is_some() {
                            return Err(format!(
                                "{at}.base_url: only {{params.…}} placeholders (filled at submission)"
                            ));
                        }
                    }
                    if let Some(a) = auth {
                        check_auth(&format!("{at}.auth"), a)?;
                    }
                }
            }
            if f.location.is_some() && i + 1 != self.fallbacks.len() {
                return Err(format!("{at}: files hold the whole resource, so a location comes last"));
            }
            if f.location.is_some() && self.parent.is_some() {
                return Err(format!("{at}: a child resource cannot fall back to files (they are not per parent)"));
            }
        }
        for (what, n) in [
            ("max_pages", self.max_pages),
            ("records_per_file", self.records_per_file),
            ("max_page_bytes", self.max_page_bytes),
        ] {
            if n == Some(0) {
                return Err(format!("{what} must be at least 1"));
            }
        }
        if self.max_retries == Some(0) {
            return Err("max_retries must be at least 1 (the first attempt counts)".into());
        }
        if let Some(t) = &self.timeout {
            let d = crate::duration::parse(t).map_err(|e| format!("timeout: {e}"))?;
            if d.is_zero() {
                return Err("timeout must be more than 0s".into());
            }
        }
        if self.body.is_some() && self.method == HttpMethod::Get {
            return Err("body needs method POST".into());
        }
        if let Some(sec) = &self.security {
            sec.check()?;
            let policy = sec.policy(self.urls().into_iter().map(|(_, u)| u));
            for (field, url) in self.urls() {
                policy.check(url).map_err(|e| format!("{field}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The URLs the step itself names, by field: its base URL, its fallbacks' and its
    /// token endpoints (the hosts a security policy allows when it lists none).
    pub fn urls(&self) -> Vec<(String, &str)> {
        fn token(a: &Option<AuthSpec>) -> Option<&str> {
            match a {
                Some(
                    AuthSpec::Oauth2ClientCredentials { token_url, .. }
                    | AuthSpec::Oauth2RefreshToken { token_url, .. },
                ) => Some(token_url.as_str()),
                _ => None,
            }
        }
        let mut out = vec![("base_url".to_string(), self.base_url.as_str())];
        if let Some(t) = token(&self.auth) {
            out.push(("auth.token_url".into(), t));
        }
        for (i, f) in self.fallbacks.iter().enumerate() {
            if let Some(u) = &f.base_url {
                out.push((format!("fallbacks[{i}].base_url"), u));
            }
            if let Some(t) = token(&f.auth) {
                out.push((format!("fallbacks[{i}].auth.token_url"), t));
            }
        }
        out
    }

    /// What the step reaches: each API source's base URL joined with `path` as the
    /// requests are (`base_url`, `fallbacks[i].base_url`; a `path` that moves the request
    /// to another host shows as `… + path` with that host), each auth's `token_url` and
    /// credentials file, a files fallback's `location`, and `security.ca.file`. Next-page
    /// URLs and redirects come from the server and are not checked yet (a
    /// `secure_api` policy's host list is what holds them today).
    pub fn reach(&self) -> Reach {
        fn auth_reach(r: &mut Reach, field: &str, auth: Option<&AuthSpec>) {
            let Some(a) = auth else { return };
            match a {
                AuthSpec::Oauth2ClientCredentials { token_url, credentials, .. }
                | AuthSpec::Oauth2RefreshToken { token_url, credentials } => {
                    r.url(format!("{field}.token_url"), token_url);
                    crate::sandbox::credentials_ref(r, &format!("{field}.credentials"), Some(credentials));
                }
                AuthSpec::ApiKey { credentials, .. }
                | AuthSpec::Basic { credentials }
                | AuthSpec::Bearer { credentials } => {
                    crate::sandbox::credentials_ref(r, &format!("{field}.credentials"), Some(credentials));
                }
            }
        }
        let mut r = Reach::default();
        r.push(request_touch("base_url", &self.base_url, &self.path));
        auth_reach(&mut r, "auth", self.auth.as_ref());
        for (i, f) in self.fallbacks.iter().enumerate() {
            let at = format!("fallbacks[{i}]");
            if let Some(u) = &f.base_url {
                r.push(request_touch(&format!("{at}.base_url"), u, &self.path));
            }
            auth_reach(&mut r, &format!("{at}.auth"), f.auth.as_ref());
            if let Some(l) = &f.location {
                r.merge(&format!("{at}.location"), l.reach());
            }
        }
        if let Some(ca) = self.security.as_ref().and_then(|s| s.ca.as_ref()) {
            crate::sandbox::secret_ref(&mut r, "security.ca", ca);
        }
        r
    }

    /// The base URL of the resource's API source `i`: 0 the primary, then its fallbacks in
    /// order (a fallback without one uses the primary's; files fallbacks come last).
    pub fn source_base_url(&self, i: usize) -> &str {
        match i {
            0 => &self.base_url,
            i => self.fallbacks.get(i - 1).and_then(|f| f.base_url.as_deref()).unwrap_or(&self.base_url),
        }
    }

    /// How many API sources the resource has: the primary and its fallbacks that are not
    /// files.
    pub fn api_sources(&self) -> usize {
        1 + self.fallbacks.iter().filter(|f| f.location.is_none()).count()
    }

    /// The URL policy of a step with `security`: which URLs its requests may go to.
    pub fn url_policy(&self) -> Option<security::UrlPolicy> {
        let sec = self.security.as_ref()?;
        Some(sec.policy(self.urls().into_iter().map(|(_, u)| u)))
    }

    /// Every value that may hold placeholders, by field: the path, each header and query
    /// parameter, and each string of the body.
    pub fn templates(&self) -> Result<Vec<(String, Template)>, String> {
        let mut out = vec![("path".to_string(), Template::parse(&self.path).map_err(|e| format!("path: {e}"))?)];
        for (k, t) in template::parse_map("headers", &self.headers)? {
            out.push((format!("headers.{k}"), t));
        }
        for (k, t) in template::parse_map("params", &self.params)? {
            out.push((format!("params.{k}"), t));
        }
        if let Some(b) = &self.body {
            out.extend(template::json_templates("body", b));
        }
        Ok(out)
    }

    /// The watermark's key for a run of job `job_name` in step `step_id`.
    pub fn watermark_key(&self, job_name: &str, step_id: &str) -> Option<String> {
        let i = self.incremental.as_ref()?;
        Some(format!("{job_name}/{}", i.name.as_deref().unwrap_or(step_id)))
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> std::time::Duration {
        let t = self.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT);
        crate::duration::parse(t).unwrap_or(std::time::Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<CollectStep, String> {
        CollectStep::parse(Some(&v))
    }

    #[test]
    fn a_full_config_reads() {
        let s = parse(json!({
            "api": "shop", "base_url": "https://api.shop.test/v2", "path": "/orders",
            "headers": {"Accept": "application/json"}, "params": {"status": "open"},
            "auth": {"type": "oauth2_refresh_token", "token_url": "https://auth.shop.test/token", "credentials": {"env": "SHOP"}},
            "paginator": {"type": "cursor", "path": "$.meta.next", "param": "after"},
            "records": "$.data[*]", "has_more": "$.meta.more", "max_pages": 500, "timeout": "10s"
        }))
        .expect("valid");
        assert_eq!(s.paginator.name(), "cursor");
        assert_eq!(s.timeout(), std::time::Duration::from_secs(10));
        let o = parse(json!({"api": "x", "base_url": "http://h", "paginator": {"type": "offset", "limit": 50}}))
            .expect("valid");
        assert_eq!(
            o.paginator,
            PaginatorSpec::Offset {
                limit: 50,
                offset_param: "offset".into(),
                limit_param: "limit".into(),
                start: 0,
                total_path: None
            }
        );
    }

    #[test]
    fn incremental_and_child_resources_read_and_params_bind_at_submission() {
        let mut c = json!({
            "api": "shop", "base_url": "https://{params.host}", "path": "/users/{parent.id}/orders",
            "params": {"since": "{cursor}", "region": "{params.region}"},
            "method": "POST", "body": {"query": "{ orders(region: \"{params.region}\") { id } }"},
            "incremental": {"cursor_path": "$.updated_at", "initial": "{params.from}"},
            "parent": {"step": "users", "include": ["id", "org.name"], "parallel": 8}
        });
        let params = json!({"host": "api.shop.test", "region": "eu", "from": "2026-01-01T00:00:00Z"});
        bind_params(&mut c, Some(&params)).expect("binds");
        let s = parse(c).expect("valid");
        assert_eq!((s.base_url.as_str(), s.params["region"].as_str()), ("https://api.shop.test", "eu"));
        assert_eq!(s.params["since"], "{cursor}", "the cursor is filled per run");
        assert_eq!(s.body, Some(json!({"query": "{ orders(region: \"eu\") { id } }"})));
        let i = s.incremental.as_ref().expect("incremental");
        assert_eq!(i.initial, Some(json!("2026-01-01T00:00:00Z")));
        assert_eq!(s.watermark_key("orders", "collect").as_deref(), Some("orders/collect"));
        let p = s.parent.as_ref().expect("parent");
        assert_eq!((p.column("id"), p.column("org.name")), ("_users_id".to_string(), "_users_org_name".to_string()));
        let mut missing = json!({"api": "x", "base_url": "http://h", "path": "/{params.nope}"});
        assert!(bind_params(&mut missing, None).expect_err("unbound").contains("path: {params.nope}"));
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let err = |v: Value| parse(v).expect_err("refused");
        let base = |extra: Value| {
            let mut v = json!({"api": "shop", "base_url": "https://api.shop.test"});
            if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
                o.extend(e);
            }
            v
        };
        assert!(CollectStep::parse(None).expect_err("none").contains("api and base_url"));
        assert!(err(json!({"api": "Shop!", "base_url": "https://x"})).contains("api"));
        assert!(err(json!({"api": "shop", "base_url": "ftp://x"})).contains("http:// or https://"));
        assert!(err(json!({"api": "shop", "base_url": "https://u:p@x"})).contains("credentials"));
        assert!(err(base(json!({"paginator": {"type": "scroll"}}))).contains("scroll"));
        assert!(err(base(json!({"auth": {"type": "kerberos"}}))).contains("kerberos"));
        assert!(err(base(json!({"records": "$.data[?"}))).contains("records \"$.data[?\" is not a JSONPath"));
        assert!(err(base(json!({"paginator": {"type": "next_url", "path": "data.next"}}))).contains("paginator.path"));
        assert!(err(base(json!({"paginator": {"type": "offset", "limit": 0}}))).contains("limit must be at least 1"));
        assert!(
            err(base(json!({"paginator": {"type": "cursor", "param": "c"}}))).contains("path (in the body) or header")
        );
        assert!(
            err(base(json!({"auth": {"type": "bearer", "credentials": {"env": ""}}}))).contains("auth.credentials.env")
        );
        assert!(err(base(
            json!({"auth": {"type": "oauth2_client_credentials", "token_url": "nope", "credentials": {"env": "X"}}})
        ))
        .contains("auth.token_url"));
        assert!(err(base(json!({"max_pages": 0}))).contains("max_pages"));
        assert!(err(base(json!({"max_retries": 0}))).contains("max_retries"));
        assert!(err(base(json!({"timeout": "0s"}))).contains("timeout"));
        assert!(err(base(json!({"path": "/u/{user}"}))).contains("unknown placeholder {user}"));
        assert!(
            err(base(json!({"params": {"since": "{cursor}"}}))).contains("params.since: {cursor} needs incremental")
        );
        assert!(err(base(json!({"params": {"since": "{cursor}"}, "incremental": {"cursor_path": "$.t"}})))
            .contains("incremental.initial"));
        assert!(err(base(json!({"path": "/u/{parent.id}"}))).contains("path: {parent.…} needs parent"));
        assert!(err(base(json!({"body": {"q": "{params.x}"}, "method": "POST"})))
            .contains("{params.x} names a parameter the job does not give"));
        assert!(err(base(json!({"incremental": {"cursor_path": "updated_at"}}))).contains("incremental.cursor_path"));
        assert!(err(base(json!({"incremental": {"cursor_path": "$.t", "initial": [1]}}))).contains("number or text"));
        assert!(err(base(json!({"format": "csv", "incremental": {"cursor_path": "$.t"}}))).contains("not CSV"));
        assert!(err(base(json!({"max_pages": 3, "incremental": {"cursor_path": "$.t"}}))).contains("max_pages"));
        assert!(err(base(json!({"parent": {"step": "Users"}}))).contains("parent.step"));
        assert!(err(base(json!({"parent": {"step": "users", "parallel": 0}}))).contains("parent.parallel"));
        assert!(err(json!({"api": "shop", "base_url": "https://{cursor}.x"})).contains("base_url"));
        assert!(err(base(json!({"fallbacks": [{}]}))).contains("fallbacks[0]: give base_url, auth or location"));
        assert!(err(base(json!({"fallbacks": [{"base_url": "ftp://x"}]}))).contains("fallbacks[0].base_url"));
        assert!(err(base(json!({"fallbacks": [{"auth": {"type": "bearer", "credentials": {"env": ""}}}]})))
            .contains("fallbacks[0].auth.credentials.env"));
        assert!(err(base(json!({"fallbacks": [{"location": {"uri": "file:///x"}}, {"base_url": "https://b"}]})))
            .contains("a location comes last"));
        assert!(err(base(json!({"fallbacks": [{"location": {"uri": "nope://x"}}]}))).contains("fallbacks[0].location"));
        assert!(err(base(json!({"fallbacks": [{"base_url": "https://b", "patterns": ["*"]}]}))).contains("patterns"));
        assert!(err(base(json!({"body": {"q": 1}}))).contains("POST"));
        assert!(err(base(json!({"format": "csv", "records": "$.x"}))).contains("records selects from JSON pages"));
        assert!(err(base(json!({"headers": {"Bad Name": "x"}}))).contains("headers name"));
        assert!(err(base(json!({"bogus": 1}))).contains("bogus"));
    }
}
