//! The next page's URL in the body, at a JSONPath (`$.next`, `$.links.next`); absolute,
//! or relative to the page's own URL. None, null or empty: the last page.

use serde_json_path::JsonPath;
use url::Url;

use super::{json_path, select, text, Page, Paginator};
use crate::error::CollectError;

pub struct NextUrl {
    path: JsonPath,
}

impl NextUrl {
    pub fn new(path: &str) -> Result<NextUrl, CollectError> {
        Ok(NextUrl { path: json_path("paginator.path", path)? })
    }
}

impl Paginator for NextUrl {
    fn next(&mut self, page: &Page) -> Result<Option<Url>, CollectError> {
        let Some(next) = select(&self.path, page.json).and_then(text) else { return Ok(None) };
        page.url
            .join(&next)
            .map(Some)
            .map_err(|e| CollectError::BadPage(format!("{}: the next page's URL {next:?} is not a URL: {e}", page.url)))
    }
}
