//! The file manager's metrics: files fetched (verified into staging) and their bytes, and
//! files quarantined (a checksum that kept failing), by the location's scheme.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use weir_runtime::metrics::register;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemeLabels {
    /// file, s3, azblob, gcs, sftp, ftp …
    pub scheme: String,
}

/// The families.
pub struct Files {
    pub fetched: Family<SchemeLabels, Counter>,
    pub bytes: Family<SchemeLabels, Counter>,
    pub quarantined: Family<SchemeLabels, Counter>,
}

/// The process's file metrics, registered on first use.
pub static FILES: LazyLock<Files> = LazyLock::new(|| {
    let f = Files { fetched: Family::default(), bytes: Family::default(), quarantined: Family::default() };
    register("files_fetched", "Files fetched and verified into staging", f.fetched.clone());
    register("files_fetched_bytes", "Bytes of the files fetched", f.bytes.clone());
    register("files_quarantined", "Files set aside after their checksum kept failing", f.quarantined.clone());
    f
});
