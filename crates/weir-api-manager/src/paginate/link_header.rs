//! The `Link` header (RFC 8288): the link with `rel` (default `next`) is the next page.

use url::Url;

use super::{Page, Paginator};
use crate::error::CollectError;

pub struct LinkHeader {
    pub rel: String,
}

impl Paginator for LinkHeader {
    fn next(&mut self, page: &Page) -> Result<Option<Url>, CollectError> {
        for value in page.headers.get_all("link") {
            let Ok(text) = value.to_str() else { continue };
            let links = parse_link_header::parse_with_rel(text)
                .map_err(|e| CollectError::BadPage(format!("{}: the Link header is not RFC 8288: {e:?}", page.url)))?;
            if let Some(l) = links.get(&self.rel) {
                return page.url.join(&l.raw_uri).map(Some).map_err(|e| {
                    CollectError::BadPage(format!("{}: the Link header's {} URL is not a URL: {e}", page.url, self.rel))
                });
            }
        }
        Ok(None)
    }
}
