//! One request, one page.

use super::{Page, Paginator};
use crate::error::CollectError;

pub struct Single;

impl Paginator for Single {
    fn next(&mut self, _page: &Page) -> Result<Option<url::Url>, CollectError> {
        Ok(None)
    }
}
