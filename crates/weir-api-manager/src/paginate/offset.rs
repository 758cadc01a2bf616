//! `offset`/`limit` parameters: the next page starts where this one ended; a page shorter
//! than the limit (or empty) is the last, as is reaching the total when the body says it.

use serde_json_path::JsonPath;
use url::Url;

use super::{json_path, number, param, select, with_param, Page, Paginator};
use crate::error::CollectError;

pub struct Offset {
    limit: u64,
    offset_param: String,
    limit_param: String,
    at: u64,
    total: Option<JsonPath>,
}

impl Offset {
    pub fn new(
        limit: u64,
        offset_param: &str,
        limit_param: &str,
        start: u64,
        total: Option<&str>,
    ) -> Result<Offset, CollectError> {
        Ok(Offset {
            limit,
            offset_param: offset_param.into(),
            limit_param: limit_param.into(),
            at: start,
            total: total.map(|t| json_path("paginator.total_path", t)).transpose()?,
        })
    }

    fn at(&self, url: &Url) -> Url {
        with_param(
            &with_param(url, &self.limit_param, &self.limit.to_string()),
            &self.offset_param,
            &self.at.to_string(),
        )
    }
}

impl Paginator for Offset {
    fn first(&mut self, url: Url) -> Url {
        self.at(&url)
    }

    fn next(&mut self, page: &Page) -> Result<Option<Url>, CollectError> {
        if page.records < self.limit {
            return Ok(None);
        }
        self.at += self.limit;
        if let Some(total) = self.total.as_ref().and_then(|t| select(t, page.json)).and_then(number) {
            if self.at >= total {
                return Ok(None);
            }
        }
        Ok(Some(self.at(page.url)))
    }

    fn resume(&mut self, next: &Url) {
        if let Some(at) = param(next, &self.offset_param) {
            self.at = at;
        }
    }
}
