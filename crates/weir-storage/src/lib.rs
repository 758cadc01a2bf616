//! Where files live. A [`Location`] is a [`LocationSpec`] opened through Apache OpenDAL —
//! local disk, S3-compatible stores, SFTP, FTP, Azure Blob, GCS behind one interface —
//! with credentials read by reference (environment or a mounted secret file) at open and
//! never logged. It lists files matching glob [`Patterns`], downloads a file in chunks to
//! local disk computing its SHA-256 (and MD5, to check an S3 ETag) on the way, and moves
//! or copies files for archiving.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt;
use md5::Md5;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{services, EntryMode, ErrorKind, Operator};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use weir_core::files::{redact_uri, CredentialsRef, LocationSpec, SeenFile};

/// Errors of a location.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The spec cannot be opened (bad URI, missing credentials).
    #[error("location {uri}: {message}")]
    Config { uri: String, message: String },
    /// The backend refused or failed; `retryable` says whether another try may pass.
    #[error("{op} {uri}/{path}: {message}")]
    Backend { op: &'static str, uri: String, path: String, message: String, retryable: bool },
    /// The file is not there.
    #[error("{uri}/{path}: no such file")]
    NotFound { uri: String, path: String },
    /// Local disk.
    #[error("{path}: {source}")]
    Local { path: String, source: std::io::Error },
    /// A conditional write lost: the file was created or changed since it was read.
    #[error("{uri}/{path}: changed by another writer")]
    Conflict { uri: String, path: String },
    /// A glob pattern does not compile.
    #[error("pattern {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
}

impl StorageError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Backend { retryable, .. } => *retryable,
            StorageError::Local { .. } | StorageError::Conflict { .. } => true,
            _ => false,
        }
    }
}

/// Compiled glob patterns (`*.csv`, `**/*.json.gz`); `*` does not cross `/`.
#[derive(Debug, Clone)]
pub struct Patterns(globset::GlobSet);

impl Patterns {
    pub fn new(patterns: &[String]) -> Result<Patterns, StorageError> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            let g = globset::GlobBuilder::new(p.trim_start_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| StorageError::Pattern { pattern: p.clone(), message: e.kind().to_string() })?;
            b.add(g);
        }
        b.build()
            .map(Patterns)
            .map_err(|e| StorageError::Pattern { pattern: patterns.join(", "), message: e.to_string() })
    }

    /// Whether `path` (relative to the location, `/`-separated) matches any pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

/// What a download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// Lower-case hex.
    pub md5: String,
}

/// The content type of everything Weir writes: it writes bytes, and some backends (and
/// GCS emulators) misbehave on objects without one.
const CONTENT_TYPE: &str = "application/octet-stream";

/// What a conditional write expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No file at the path.
    Absent,
    /// The file at this version token (ETag or generation), as [`Location::read_versioned`] returned it.
    Version(String),
}

/// How a backend compares before it swaps.
enum Cas {
    ETag,
    Version,
}

/// An opened location.
#[derive(Clone)]
pub struct Location {
    op: Operator,
    /// The URI without any user part's secrets, for messages.
    shown: String,
    scheme: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location").field("uri", &self.shown).finish()
    }
}

/// Reads secrets: the environment (`<PREFIX>_<KEY>`) or a `key=value` file.
fn secrets(spec: &LocationSpec, uri: &str) -> Result<HashMap<String, String>, StorageError> {
    let keys = [
        "access_key_id",
        "secret_access_key",
        "session_token",
        "password",
        "account_name",
        "account_key",
        "credential",
        "token",
    ];
    match &spec.credentials {
        None => Ok(HashMap::new()),
        Some(c) => read_secrets(c, &keys).map_err(|m| StorageError::Config { uri: uri.to_string(), message: m }),
    }
}

/// Reads the secrets a reference names, among `keys` (lower case): from the environment
/// (`<PREFIX>_<KEY>`, at least one of them set) or a mounted file of `key=value` lines
/// (no other keys). The error names the reference, never a value.
pub fn read_secrets(creds: &CredentialsRef, keys: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    match creds {
        CredentialsRef::Env(prefix) => {
            for k in keys {
                if let Ok(v) = std::env::var(format!("{prefix}_{}", k.to_ascii_uppercase())) {
                    out.insert(k.to_string(), v);
                }
            }
            if out.is_empty() {
                return Err(format!("credentials.env {prefix:?}: no {prefix}_* variable is set"));
            }
        }
        CredentialsRef::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("credentials file {path}: {e}"))?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                let (k, v) =
                    line.split_once('=').ok_or_else(|| format!("credentials file {path}: a line is not key=value"))?;
                let k = k.trim().to_ascii_lowercase();
                if !keys.contains(&k.as_str()) {
                    return Err(format!("credentials file {path}: unknown key {k:?} (known: {})", keys.join(", ")));
                }
                out.insert(k, v.trim().to_string());
            }
        }
    }
    Ok(out)
}

/// [`read_secrets`], failing unless every one of `required` is there; the error names
/// the variable or the file key that is missing, never a value.
pub fn require_secrets(
    creds: &CredentialsRef,
    keys: &[&str],
    required: &[&str],
) -> Result<HashMap<String, String>, String> {
    let got = read_secrets(creds, keys)?;
    if let Some(k) = required.iter().find(|k| !got.contains_key(**k)) {
        return Err(match creds {
            CredentialsRef::Env(p) => format!("{p}_{} is not set", k.to_ascii_uppercase()),
            CredentialsRef::File(f) => format!("{k} is not in {f}"),
        });
    }
    Ok(got)
}

/// Reads one secret a reference names (a file, read whole; an environment variable),
/// trimmed of surrounding white space. The error names the reference, never a value.
pub fn read_secret(secret: &weir_core::secret::SecretRef) -> Result<Vec<u8>, String> {
    use weir_core::secret::SecretRef;
    let raw = match secret {
        SecretRef::Env(name) => {
            std::env::var(name).map(String::into_bytes).map_err(|_| format!("{} is not set", secret.describe()))?
        }
        SecretRef::File(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", secret.describe()))?,
    };
    let start = raw.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(raw.len());
    let end = raw.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    if start >= end {
        return Err(format!("{} is empty", secret.describe()));
    }
    Ok(raw[start..end].to_vec())
}

/// `host[:port]` and the path of an `sftp://`/`ftp://` URI, and its user.
fn host_path(rest: &str) -> (Option<String>, String, String) {
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user.to_string()), host.to_string(), path),
        None => (None, authority.to_string(), path),
    }
}

/// Bucket (or container) and the prefix below it.
fn bucket_prefix(rest: &str) -> (String, String) {
    match rest.split_once('/') {
        Some((b, p)) => (b.to_string(), format!("/{}", p.trim_matches('/'))),
        None => (rest.to_string(), "/".to_string()),
    }
}

impl Location {
    /// Opens `spec`, reading its credentials now.
    pub fn open(spec: &LocationSpec) -> Result<Location, StorageError> {
        let shown = redact_uri(&spec.uri);
        spec.check().map_err(|m| StorageError::Config { uri: shown.clone(), message: m })?;
        let (scheme, rest) = spec.uri.split_once("://").unwrap_or(("", ""));
        let sec = secrets(spec, &shown)?;
        let get = |k: &str| sec.get(k).map(String::as_str);
        let config = |e: opendal::Error| StorageError::Config { uri: shown.clone(), message: e.to_string() };
        install_http_transport();
        let op = match scheme {
            "file" => {
                let root = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
                // OpenDAL would create a missing root; a typo in a watch must not do that.
                if !Path::new(&root).is_dir() {
                    return Err(StorageError::Config { uri: shown, message: "the folder does not exist".into() });
                }
                Operator::new(services::Fs::default().root(&root)).map_err(config)?
            }
            "s3" => {
                let (bucket, prefix) = bucket_prefix(rest);
                let mut b = services::S3::default()
                    .bucket(&bucket)
                    .root(&prefix)
                    .region(spec.region.as_deref().unwrap_or("us-east-1"));
                if let Some(e) = &spec.endpoint {
                    b = b.endpoint(e);
                }
                if let (Some(id), Some(key)) = (get("access_key_id"), get("secret_access_key")) {
                    b = b.access_key_id(id).secret_access_key(key).disable_config_load().disable_ec2_metadata();
                    if let Some(t) = get("session_token") {
                        b = b.session_token(t);
                    }
                }
                Operator::new(b).map_err(config)?
            }
            "sftp" => {
                let (user, host, path) = host_path(rest);
                let mut b = services::Sftp::default()
                    .endpoint(&format!("ssh://{host}"))
                    .root(&path)
                    .known_hosts_strategy(spec.known_hosts.as_deref().unwrap_or("strict"));
                if let Some(u) = &user {
                    b = b.user(u);
                }
                if let Some(k) = &spec.key_file {
                    b = b.key(k);
                }
                Operator::new(b).map_err(config)?
            }
            "ftp" => {
                let (user, host, path) = host_path(rest);
                let mut b = services::Ftp::default().endpoint(&format!("ftp://{host}")).root(&path);
                if let Some(u) = &user {
                    b = b.user(u);
                }
                if let Some(p) = get("password") {
                    b = b.password(p);
                }
                Operator::new(b).map_err(config)?
            }
            "azblob" => {
                let (container, prefix) = bucket_prefix(rest);
                let mut b = services::Azblob::default().container(&container).root(&prefix);
                if let Some(e) = &spec.endpoint {
                    b = b.endpoint(e);
                }
                if let Some(n) = get("account_name") {
                    b = b.account_name(n);
                }
                if let Some(k) = get("account_key") {
                    b = b.account_key(k);
                }
                Operator::new(b).map_err(config)?
            }
            "gcs" => {
                let (bucket, prefix) = bucket_prefix(rest);
                let mut b = services::Gcs::default().bucket(&bucket).root(&prefix);
                if let Some(e) = &spec.endpoint {
                    b = b.endpoint(e);
                }
                if let Some(c) = get("credential") {
                    b = b.credential(c);
                }
                if let Some(t) = get("token") {
                    b = b.token(t.to_string());
                }
                Operator::new(b).map_err(config)?
            }
            other => return Err(StorageError::Config { uri: shown, message: format!("unknown scheme {other:?}") }),
        };
        let op = op
            .layer(RetryLayer::new().with_max_times(3).with_min_delay(Duration::from_millis(200)))
            .layer(TimeoutLayer::new().with_timeout(Duration::from_secs(120)));
        Ok(Location { op, shown, scheme: scheme.to_string() })
    }

    /// The location's URI, safe to show.
    pub fn uri(&self) -> &str {
        &self.shown
    }

    /// The URI of `path` below the location (as shown: no secrets).
    pub fn uri_of(&self, path: &str) -> String {
        format!("{}/{}", self.shown.trim_end_matches('/'), path.trim_start_matches('/'))
    }

    /// The path below the location that `uri` names, if it is below it: the inverse of
    /// [`Location::uri_of`].
    pub fn path_of<'a>(&self, uri: &'a str) -> Option<&'a str> {
        uri.strip_prefix(self.shown.trim_end_matches('/'))?.strip_prefix('/')
    }

    fn err(&self, op: &'static str, path: &str, e: opendal::Error) -> StorageError {
        match e.kind() {
            ErrorKind::NotFound => return StorageError::NotFound { uri: self.shown.clone(), path: path.to_string() },
            ErrorKind::ConditionNotMatch => {
                return StorageError::Conflict { uri: self.shown.clone(), path: path.to_string() }
            }
            _ => {}
        }
        let retryable = e.is_temporary()
            || !matches!(e.kind(), ErrorKind::ConfigInvalid | ErrorKind::PermissionDenied | ErrorKind::Unsupported);
        StorageError::Backend { op, uri: self.shown.clone(), path: path.to_string(), message: e.to_string(), retryable }
    }

    /// Checks the location answers: its root is there and can be listed (which also
    /// proves the credentials). Returns the first path listed, if any.
    pub async fn probe(&self) -> Result<Option<String>, StorageError> {
        let missing = |e: opendal::Error| match self.err("list", "", e) {
            StorageError::NotFound { uri, .. } => {
                StorageError::Config { uri, message: "the bucket, container or folder does not exist".into() }
            }
            other => other,
        };
        let root = self.op.stat("/").await.map_err(missing)?;
        if root.mode() == EntryMode::FILE {
            return Err(StorageError::Config {
                uri: self.shown.clone(),
                message: "names a file; a location is a folder, bucket or prefix".into(),
            });
        }
        let mut lister = self.op.lister_with("/").await.map_err(missing)?;
        match lister.next().await {
            None => Ok(None),
            Some(Ok(entry)) => Ok(Some(entry.path().trim_start_matches('/').to_string())),
            Some(Err(e)) => Err(missing(e)),
        }
    }

    /// Files below the location matching `patterns`, by path.
    pub async fn list(&self, patterns: &Patterns) -> Result<Vec<SeenFile>, StorageError> {
        let mut lister = self.op.lister_with("/").recursive(true).await.map_err(|e| self.err("list", "", e))?;
        let mut out = Vec::new();
        while let Some(entry) = lister.next().await {
            let entry = entry.map_err(|e| self.err("list", "", e))?;
            let path = entry.path().trim_start_matches('/').to_string();
            if entry.metadata().mode() == EntryMode::DIR || !patterns.matches(&path) {
                continue;
            }
            let meta = entry.metadata();
            // Listings of some backends (local disk, SFTP) carry no size or time: ask.
            let meta = if meta.last_modified().is_none() {
                self.op.stat(&path).await.map_err(|e| self.err("stat", &path, e))?
            } else {
                meta.clone()
            };
            out.push(seen(&path, &meta));
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The file as the backend describes it now, with its Content-MD5 where offered.
    pub async fn stat(&self, path: &str) -> Result<(SeenFile, Option<String>), StorageError> {
        let meta = self.op.stat(path).await.map_err(|e| self.err("stat", path, e))?;
        Ok((seen(path, &meta), meta.content_md5().map(str::to_string)))
    }

    /// Reads a small file whole (a `.sha256` sidecar); `None` if it does not exist.
    pub async fn read_small(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, StorageError> {
        match self.op.stat(path).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("stat", path, e)),
            Ok(m) if m.content_length() > max => {
                return Err(StorageError::Backend {
                    op: "read",
                    uri: self.shown.clone(),
                    path: path.to_string(),
                    message: format!("{} bytes, more than the {max} expected", m.content_length()),
                    retryable: false,
                })
            }
            Ok(_) => {}
        }
        let buf = self.op.read(path).await.map_err(|e| self.err("read", path, e))?;
        Ok(Some(buf.to_vec()))
    }

    /// The last `n` bytes of a file (all of it if shorter) and its size: a Parquet
    /// footer, without reading the file.
    pub async fn read_tail(&self, path: &str, n: u64) -> Result<(Vec<u8>, u64), StorageError> {
        let size = self.op.stat(path).await.map_err(|e| self.err("stat", path, e))?.content_length();
        let from = size.saturating_sub(n);
        let buf = self.op.read_with(path).range(from..size).await.map_err(|e| self.err("read", path, e))?;
        Ok((buf.to_vec(), size))
    }

    /// Downloads `path` to `dest` in chunks of `chunk` bytes, hashing as it goes. The
    /// file is written to `dest` with a `.part` suffix and renamed when complete. Staged
    /// downloads are not fsynced: a re-run of the step fetches them again.
    pub async fn download(&self, path: &str, dest: &Path, chunk: usize) -> Result<Downloaded, StorageError> {
        let local = |p: &Path, e: std::io::Error| StorageError::Local { path: p.display().to_string(), source: e };
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| local(dir, e))?;
        }
        let part = dest.with_extension(format!(
            "{}part",
            dest.extension().map(|e| format!("{}.", e.to_string_lossy())).unwrap_or_default()
        ));
        let reader = self.op.reader_with(path).chunk(chunk).await.map_err(|e| self.err("read", path, e))?;
        let mut stream = reader.into_bytes_stream(..).await.map_err(|e| self.err("read", path, e))?;
        let mut file = tokio::fs::File::create(&part).await.map_err(|e| local(&part, e))?;
        let (mut sha, mut md5, mut size) = (Sha256::new(), Md5::new(), 0u64);
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(|e| StorageError::Backend {
                op: "read",
                uri: self.shown.clone(),
                path: path.to_string(),
                message: e.to_string(),
                retryable: true,
            })?;
            sha.update(&bytes);
            md5.update(&bytes);
            size += bytes.len() as u64;
            file.write_all(&bytes).await.map_err(|e| local(&part, e))?;
        }
        file.flush().await.map_err(|e| local(&part, e))?;
        drop(file);
        tokio::fs::rename(&part, dest).await.map_err(|e| local(dest, e))?;
        Ok(Downloaded { size, sha256: hex(&sha.finalize()), md5: hex(&md5.finalize()) })
    }

    /// Moves (or copies) `from` to `to` within the location.
    pub async fn relocate(&self, from: &str, to: &str, keep_source: bool) -> Result<(), StorageError> {
        let cap = self.op.info().capability();
        if keep_source || !cap.rename {
            if cap.copy {
                self.op.copy(from, to).await.map_err(|e| self.err("copy", from, e))?;
            } else {
                let data = self.op.read(from).await.map_err(|e| self.err("read", from, e))?;
                self.op.write_with(to, data).content_type(CONTENT_TYPE).await.map_err(|e| self.err("write", to, e))?;
            }
            if !keep_source {
                self.op.delete(from).await.map_err(|e| self.err("delete", from, e))?;
            }
            return Ok(());
        }
        self.op.rename(from, to).await.map_err(|e| self.err("rename", from, e))
    }

    /// Writes a small file (tests, sidecars).
    pub async fn put(&self, path: &str, data: Vec<u8>) -> Result<(), StorageError> {
        self.op
            .write_with(path, data)
            .content_type(CONTENT_TYPE)
            .await
            .map(|_| ())
            .map_err(|e| self.err("write", path, e))
    }

    /// How the backend swaps a file only if unchanged: on its ETag (S3, Azure Blob) or its
    /// generation (GCS); `None` if it cannot, or cannot create a file only if absent.
    fn compare_and_swap(&self) -> Option<Cas> {
        let cap = self.op.info().capability();
        if !cap.write_with_if_not_exists {
            None
        } else if cap.write_with_if_match {
            Some(Cas::ETag)
        } else if cap.write_with_if_version_match {
            Some(Cas::Version)
        } else {
            None
        }
    }

    /// Whether the backend writes conditionally (create-only and compare-and-swap): what
    /// a fenced commit on a shared store needs.
    pub fn conditional_writes(&self) -> bool {
        self.compare_and_swap().is_some()
    }

    /// Reads a small file whole with its version token (ETag or generation) for
    /// [`Location::put_if`]; `None` if it does not exist. The token may be older than
    /// the content read, never newer: a swap against it then fails, it never overwrites.
    pub async fn read_versioned(&self, path: &str) -> Result<Option<(Vec<u8>, String)>, StorageError> {
        let meta = match self.op.stat(path).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("stat", path, e)),
            Ok(m) => m,
        };
        let token = match self.compare_and_swap() {
            Some(Cas::ETag) => meta.etag(),
            Some(Cas::Version) => meta.version(),
            None => None,
        };
        let Some(token) = token.map(str::to_string) else {
            return Err(StorageError::Backend {
                op: "stat",
                uri: self.shown.clone(),
                path: path.to_string(),
                message: "the backend gives no version of the file, so it cannot be updated safely".into(),
                retryable: false,
            });
        };
        match self.op.read(path).await {
            Ok(buf) => Ok(Some((buf.to_vec(), token))),
            // Deleted between the stat and the read: as if changed by another writer.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(StorageError::Conflict { uri: self.shown.clone(), path: path.to_string() })
            }
            Err(e) => Err(self.err("read", path, e)),
        }
    }

    /// Writes a small file only if it is as `expect` says; [`StorageError::Conflict`] if
    /// another writer got there first.
    pub async fn put_if(&self, path: &str, data: Vec<u8>, expect: &Expect) -> Result<(), StorageError> {
        let w = self.op.write_with(path, data).content_type(CONTENT_TYPE);
        let w = match (expect, self.compare_and_swap()) {
            (Expect::Absent, _) => w.if_not_exists(true),
            (Expect::Version(v), Some(Cas::Version)) => w.if_version_match(v),
            (Expect::Version(v), _) => w.if_match(v),
        };
        w.await.map(|_| ()).map_err(|e| self.err("write", path, e))
    }

    /// Uploads a local file to `path` in chunks of `chunk` bytes (multipart where the
    /// backend has it, so a large file never sits in memory whole).
    pub async fn upload(&self, local: &Path, path: &str, chunk: usize) -> Result<u64, StorageError> {
        use tokio::io::AsyncReadExt;
        let local_err = |e: std::io::Error| StorageError::Local { path: local.display().to_string(), source: e };
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        let mut w = self
            .op
            .writer_with(path)
            .chunk(chunk)
            .content_type(CONTENT_TYPE)
            .await
            .map_err(|e| self.err("write", path, e))?;
        let mut total = 0u64;
        loop {
            let mut buf = Vec::with_capacity(chunk);
            let n = match (&mut file).take(chunk as u64).read_to_end(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await; // no half multipart upload left behind
                    return Err(local_err(e));
                }
            };
            if n == 0 {
                break;
            }
            total += n as u64;
            if let Err(e) = w.write(buf).await {
                let _ = w.abort().await;
                return Err(self.err("write", path, e));
            }
        }
        if let Err(e) = w.close().await {
            let _ = w.abort().await;
            return Err(self.err("write", path, e));
        }
        Ok(total)
    }

    /// Deletes a file; a file already gone is fine.
    pub async fn delete(&self, path: &str) -> Result<(), StorageError> {
        match self.op.delete(path).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err("delete", path, e)),
            _ => Ok(()),
        }
    }

    /// The backend's scheme (`file`, `s3`, ...).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }
}

fn seen(path: &str, meta: &opendal::Metadata) -> SeenFile {
    let modified_ms = meta
        .last_modified()
        .map(std::time::SystemTime::from)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    SeenFile {
        path: path.trim_start_matches('/').to_string(),
        size: meta.content_length(),
        modified_ms,
        etag: meta.etag().map(|e| e.trim_matches('"').to_string()),
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// OpenDAL's HTTP backends need a process-wide transport; Weir's is reqwest over OpenSSL.
fn install_http_transport() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        opendal::HttpTransporter::install_default(opendal_http_transport_reqwest::ReqwestTransport::new(
            reqwest::Client::new(),
        ));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        let p = Patterns::new(&["*.csv".into(), "**/*.json.gz".into()]).expect("compile");
        assert!(p.matches("a.csv"));
        assert!(!p.matches("sub/a.csv"), "* stays in one folder");
        assert!(p.matches("x/y/z.json.gz"));
        assert!(p.matches("z.json.gz"));
        assert!(!p.matches("a.csv.sha256"));
        assert!(Patterns::new(&["[".into()]).is_err());
    }

    #[test]
    fn uris_split_into_their_parts() {
        assert_eq!(host_path("bob@h:2222/up/in"), (Some("bob".into()), "h:2222".into(), "/up/in".into()));
        assert_eq!(host_path("h"), (None, "h".into(), "/".into()));
        assert_eq!(bucket_prefix("b/p/q/"), ("b".into(), "/p/q".into()));
        assert_eq!(bucket_prefix("b"), ("b".into(), "/".into()));
    }

    #[tokio::test]
    async fn local_disk_lists_downloads_and_archives() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("in/sub")).expect("mkdir");
        std::fs::write(dir.path().join("in/a.csv"), b"id\n1\n").expect("write");
        std::fs::write(dir.path().join("in/sub/b.csv"), b"id\n2\n").expect("write");
        std::fs::write(dir.path().join("in/notes.txt"), b"x").expect("write");
        let spec = LocationSpec { uri: format!("file://{}/in", dir.path().display()), ..Default::default() };
        let loc = Location::open(&spec).expect("open");
        let files = loc.list(&Patterns::new(&["**/*.csv".into()]).expect("glob")).await.expect("list");
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["a.csv", "sub/b.csv"]);
        assert!(files.iter().all(|f| f.size == 5 && f.modified_ms > 0));
        let dest = dir.path().join("staging/a.csv");
        let d = loc.download("a.csv", &dest, 2).await.expect("download");
        assert_eq!(d.size, 5);
        assert_eq!(d.sha256, hex(&Sha256::digest(b"id\n1\n")));
        assert_eq!(std::fs::read(&dest).expect("staged"), b"id\n1\n");
        loc.relocate("a.csv", "archive/a.csv", false).await.expect("move");
        assert!(dir.path().join("in/archive/a.csv").exists() && !dir.path().join("in/a.csv").exists());
        let e = loc.download("missing.csv", &dir.path().join("m"), 1024).await.expect_err("missing");
        assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
        assert!(loc.probe().await.expect("probe").is_some(), "the folder answers and is not empty");
        let typo = LocationSpec { uri: format!("file://{}/inn", dir.path().display()), ..Default::default() };
        let e = Location::open(&typo).expect_err("missing folder");
        assert!(e.to_string().contains("/inn: the folder does not exist"), "{e}");
        assert!(!dir.path().join("inn").exists(), "nothing created");
    }

    #[test]
    fn missing_credentials_are_named_without_values() {
        let spec = LocationSpec {
            uri: "s3://bucket".into(),
            credentials: Some(CredentialsRef::Env("JOB_TEST_NOPE_UNSET".into())),
            ..Default::default()
        };
        let e = Location::open(&spec).expect_err("no creds");
        assert!(e.to_string().contains("JOB_TEST_NOPE_UNSET_*"), "{e}");
    }
}
