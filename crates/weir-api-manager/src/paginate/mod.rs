//! How one page of a resource leads to the next: one file per style behind [`Paginator`].
//!
//! - [`single`] — one request.
//! - [`next_url`] — the next URL in the body (a JSONPath).
//! - [`link_header`] — the `Link` header's `rel="next"` (RFC 8288).
//! - [`cursor`] — a token from the body or a header, sent back as a query parameter.
//! - [`offset`] — `offset`/`limit`, until a short page or the total.
//! - [`page_number`] — a page number, until an empty page or the page count.
//!
//! Each returns the next request's URL, or `None` after the last page. The collector
//! refuses a next URL it has requested before (the same cursor twice would loop).

pub mod cursor;
pub mod link_header;
pub mod next_url;
pub mod offset;
pub mod page_number;
pub mod single;

use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;
use weir_core::api::PaginatorSpec;

use crate::error::CollectError;

/// What a paginator sees of the page just read.
pub struct Page<'a> {
    pub url: &'a Url,
    pub headers: &'a HeaderMap,
    /// The body, when the page is JSON.
    pub json: Option<&'a Value>,
    /// Records it held.
    pub records: u64,
}

/// A pagination style.
pub trait Paginator: Send {
    /// The first request's URL (a paginator adds its parameters).
    fn first(&mut self, url: Url) -> Url {
        url
    }
    /// The next request's URL after `page`, or `None` when it was the last.
    fn next(&mut self, page: &Page) -> Result<Option<Url>, CollectError>;
    /// Goes on from `next`, a URL it returned before a crash (its position is in it).
    fn resume(&mut self, _next: &Url) {}
}

/// A whole-number query parameter of a URL.
pub(crate) fn param(url: &Url, name: &str) -> Option<u64> {
    url.query_pairs().find(|(k, _)| k == name).and_then(|(_, v)| v.parse().ok())
}

/// The paginator a spec describes (its JSONPaths were checked at submission).
pub fn build(spec: &PaginatorSpec) -> Result<Box<dyn Paginator>, CollectError> {
    Ok(match spec {
        PaginatorSpec::Single => Box::new(single::Single),
        PaginatorSpec::NextUrl { path } => Box::new(next_url::NextUrl::new(path)?),
        PaginatorSpec::LinkHeader { rel } => Box::new(link_header::LinkHeader { rel: rel.clone() }),
        PaginatorSpec::Cursor { path, header, param } => {
            Box::new(cursor::Cursor::new(path.as_deref(), header.as_deref(), param)?)
        }
        PaginatorSpec::Offset { limit, offset_param, limit_param, start, total_path } => {
            Box::new(offset::Offset::new(*limit, offset_param, limit_param, *start, total_path.as_deref())?)
        }
        PaginatorSpec::PageNumber { param, start, total_pages_path } => {
            Box::new(page_number::PageNumber::new(param, *start, total_pages_path.as_deref())?)
        }
    })
}

/// A compiled JSONPath.
pub(crate) fn json_path(field: &str, p: &str) -> Result<serde_json_path::JsonPath, CollectError> {
    serde_json_path::JsonPath::parse(p).map_err(|e| CollectError::Config(format!("{field} {p:?}: {e}")))
}

/// The one value a JSONPath selects in a page (`None`: nothing, or null).
pub(crate) fn select<'a>(path: &serde_json_path::JsonPath, json: Option<&'a Value>) -> Option<&'a Value> {
    path.query(json?).all().into_iter().next().filter(|v| !v.is_null())
}

/// A selected value as text: a string as it is, a number as written; else nothing.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A selected value as a whole number.
pub(crate) fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// `url` with query parameter `name` set to `value` (replacing it if there).
pub(crate) fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let mut u = url.clone();
    let kept: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != name).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        q.append_pair(name, value);
    }
    u
}
