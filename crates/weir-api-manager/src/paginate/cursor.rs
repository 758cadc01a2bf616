//! A cursor token read from the body (a JSONPath) or a response header, sent back as a
//! query parameter. None, null or empty: the last page.

use serde_json_path::JsonPath;
use url::Url;

use super::{json_path, select, text, with_param, Page, Paginator};
use crate::error::CollectError;

pub struct Cursor {
    path: Option<JsonPath>,
    header: Option<String>,
    param: String,
}

impl Cursor {
    pub fn new(path: Option<&str>, header: Option<&str>, param: &str) -> Result<Cursor, CollectError> {
        Ok(Cursor {
            path: path.map(|p| json_path("paginator.path", p)).transpose()?,
            header: header.map(str::to_ascii_lowercase),
            param: param.into(),
        })
    }
}

impl Paginator for Cursor {
    fn next(&mut self, page: &Page) -> Result<Option<Url>, CollectError> {
        let token = match (&self.path, &self.header) {
            (Some(p), _) => select(p, page.json).and_then(text),
            (None, Some(h)) => page
                .headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            (None, None) => None,
        };
        Ok(token.map(|t| with_param(page.url, &self.param, &t)))
    }
}
