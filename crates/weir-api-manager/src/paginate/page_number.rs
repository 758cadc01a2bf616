//! A page number parameter, from `start` (default 1); an empty page is the last, as is
//! the page count when the body says it.

use serde_json_path::JsonPath;
use url::Url;

use super::{json_path, number, param, select, with_param, Page, Paginator};
use crate::error::CollectError;

pub struct PageNumber {
    param: String,
    page: u64,
    total_pages: Option<JsonPath>,
}

impl PageNumber {
    pub fn new(param: &str, start: u64, total_pages: Option<&str>) -> Result<PageNumber, CollectError> {
        Ok(PageNumber {
            param: param.into(),
            page: start,
            total_pages: total_pages.map(|t| json_path("paginator.total_pages_path", t)).transpose()?,
        })
    }
}

impl Paginator for PageNumber {
    fn first(&mut self, url: Url) -> Url {
        with_param(&url, &self.param, &self.page.to_string())
    }

    fn next(&mut self, page: &Page) -> Result<Option<Url>, CollectError> {
        if page.records == 0 {
            return Ok(None);
        }
        if let Some(total) = self.total_pages.as_ref().and_then(|t| select(t, page.json)).and_then(number) {
            if self.page >= total {
                return Ok(None);
            }
        }
        self.page += 1;
        Ok(Some(with_param(page.url, &self.param, &self.page.to_string())))
    }

    fn resume(&mut self, next: &Url) {
        if let Some(p) = param(next, &self.param) {
            self.page = p;
        }
    }
}
