//! What an api step's config says: the resource to collect, how its pages follow one
//! another, where its records are, and how to authenticate. Pure data and its
//! validation, so the master refuses a bad config at submission and the API manager
//! reads the same struct; the work itself lives in `weir-api-manager`.
//!
//! The api kind (see [`crate::catalog`]):
//! - `collect`: requests a resource page by page, selects its records, and leaves them
//!   in staging as bounded NDJSON files (or the CSV bodies as they came) that the batch
//!   kinds `convert`/`quality`/`store` take unchanged.
//!
//! [`template`] holds the placeholders a resource's values may carry; [`profile`] what a
//! deployment says about each API (limits, circuit), [`circuit`] the breaker itself.

pub mod circuit;
pub mod profile;
pub mod template;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::CredentialsRef;
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

/// Checks an RFC 9535 JSONPath; the error names the field and says what is wrong.
pub fn check_json_path(field: &str, path: &str) -> Result<(), String> {
    serde_json_path::JsonPath::parse(path).map(|_| ()).map_err(|e| format!("{field} {path:?} is not a JSONPath: {e}"))
}

/// Checks an http(s) URL without credentials in it.
fn check_url(field: &str, url: &str) -> Result<(), String> {
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

fn check_credentials(field: &str, c: &CredentialsRef) -> Result<(), String> {
    match c {
        CredentialsRef::Env(p) if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Err(format!("{field}.env must name an environment variable prefix, got {p:?}"))
        }
        CredentialsRef::File(p) if p.is_empty() || p.contains('\0') => {
            Err(format!("{field}.file must name a file, got {p:?}"))
        }
        _ => Ok(()),
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
        let mut templates = vec![("path".to_string(), Template::parse(&self.path).map_err(|e| format!("path: {e}"))?)];
        for (k, t) in template::parse_map("headers", &self.headers)? {
            check_token("headers name", &k)?;
            templates.push((format!("headers.{k}"), t));
        }
        for (k, t) in template::parse_map("params", &self.params)? {
            templates.push((format!("params.{k}"), t));
        }
        // The placeholders name what this step collects with: none of them yet.
        for (field, t) in &templates {
            if let Some(v) = t.vars().next() {
                let what = match v {
                    Var::Cursor => "{cursor} needs an incremental cursor",
                    Var::Parent(_) => "{parent.…} needs a parent resource",
                };
                return Err(format!("{field}: {what}, which collect does not take yet"));
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
        match &self.auth {
            None => {}
            Some(AuthSpec::ApiKey { name, credentials, .. }) => {
                check_token("auth.name", name)?;
                check_credentials("auth.credentials", credentials)?;
            }
            Some(AuthSpec::Basic { credentials } | AuthSpec::Bearer { credentials }) => {
                check_credentials("auth.credentials", credentials)?
            }
            Some(
                AuthSpec::Oauth2ClientCredentials { token_url, credentials, .. }
                | AuthSpec::Oauth2RefreshToken { token_url, credentials },
            ) => {
                check_url("auth.token_url", token_url)?;
                check_credentials("auth.credentials", credentials)?;
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
        Ok(())
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
        assert!(err(base(json!({"params": {"since": "{cursor}"}})))
            .contains("params.since: {cursor} needs an incremental cursor"));
        assert!(err(base(json!({"body": {"q": 1}}))).contains("POST"));
        assert!(err(base(json!({"format": "csv", "records": "$.x"}))).contains("records selects from JSON pages"));
        assert!(err(base(json!({"headers": {"Bad Name": "x"}}))).contains("headers name"));
        assert!(err(base(json!({"bogus": 1}))).contains("bogus"));
    }
}
