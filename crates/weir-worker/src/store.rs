//! The store a manager keeps its own domain state in (the file manager's inventory, the
//! batch manager's dataset catalogue), opened on first use from a URL, or handed over
//! already open (`weir dev` shares the master's embedded store, which has one owner).

use std::sync::Arc;

use tokio::sync::OnceCell;
use weir_store::{Store, StoreError};

/// A store opened on first use.
#[derive(Clone)]
pub struct LazyStore {
    url: String,
    cell: Arc<OnceCell<Arc<dyn Store>>>,
}

impl LazyStore {
    /// The store at `url` (`postgres://…` or `sqlite://…`), opened when first asked for.
    pub fn url(url: &str) -> LazyStore {
        LazyStore { url: url.to_string(), cell: Arc::new(OnceCell::new()) }
    }

    /// A store already open.
    pub fn shared(store: Arc<dyn Store>) -> LazyStore {
        LazyStore { url: String::new(), cell: Arc::new(OnceCell::new_with(Some(store))) }
    }

    /// The store, opened now if not yet.
    pub async fn get(&self) -> Result<Arc<dyn Store>, StoreError> {
        self.cell.get_or_try_init(|| weir_store::open(&self.url)).await.cloned()
    }
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.url.is_empty() {
            f.write_str("LazyStore(shared)")
        } else {
            write!(f, "LazyStore({})", self.url)
        }
    }
}
