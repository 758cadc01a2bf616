//! What the file manager's configs say: locations (where files live, with credentials by
//! reference), watches, and the file kinds' step configs; plus the pure rules of
//! discovery (glob-free fingerprints, change detection, the discovery event and the job
//! it starts). Opening a location and moving bytes live in `weir-storage`.
//!
//! The file kinds (queue `file`, see [`crate::catalog`]):
//! - `discover`: lists a location's files matching `patterns`; with a `watch` name, only
//!   the new or changed ones (claimed in the durable inventory, so once across replicas).
//! - `fetch`: downloads files into staging in parallel chunks with a SHA-256 each, checked
//!   against the source's `.sha256` sidecar or MD5 where the source offers one; a mismatch
//!   is retried, then quarantined with its reason.
//! - `archive`: moves or copies processed source files under an archive prefix.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::events::CloudEvent;
use crate::sandbox::Reach;

/// Longest list of paths or patterns a step config may carry.
pub const MAX_PATHS: usize = 100_000;
/// Default downloads in flight per fetch step.
pub const DEFAULT_FETCH_CONCURRENCY: usize = 10;
/// Default download chunk.
pub const DEFAULT_CHUNK_BYTES: u64 = 10 * 1024 * 1024;
/// Default attempts at a file whose checksum does not match before it is quarantined.
pub const DEFAULT_VERIFY_ATTEMPTS: u32 = 3;
/// Default poll interval of a watch.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(300);
/// The CloudEvent type of a discovered file.
pub const FILE_DISCOVERED: &str = "dev.weir.file.discovered";

/// Where files live. The scheme picks the backend: `file`, `s3`, `sftp`, `ftp`, `azblob`,
/// `gcs`. Secrets never appear here: `credentials` names where to read them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationSpec {
    /// e.g. `file:///data/in`, `s3://bucket/prefix`, `sftp://user@host:22/upload`.
    pub uri: String,
    /// A custom endpoint (MinIO, a test server), for `s3`, `azblob`, `gcs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsRef>,
    /// SFTP: the private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// SFTP: `strict` (default: the host must be in known_hosts), `add` or `accept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
}

/// Where a location's secrets are read from, never the secrets themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum CredentialsRef {
    /// Environment variables `<PREFIX>_ACCESS_KEY_ID`, `<PREFIX>_SECRET_ACCESS_KEY`,
    /// `<PREFIX>_PASSWORD`, `<PREFIX>_ACCOUNT_KEY`, `<PREFIX>_CREDENTIAL` (GCS service
    /// account JSON, base64), `<PREFIX>_TOKEN` (a GCS OAuth token), as the backend needs.
    Env(String),
    /// A mounted secret file of `key=value` lines with the same keys in lower case.
    File(String),
}

/// The backends a location may name.
pub const SCHEMES: [&str; 6] = ["file", "s3", "sftp", "ftp", "azblob", "gcs"];

impl LocationSpec {
    /// The scheme, or what is wrong with the URI.
    pub fn scheme(&self) -> Result<&str, String> {
        let (scheme, rest) = self
            .uri
            .split_once("://")
            .ok_or_else(|| format!("location uri {:?} has no scheme (e.g. s3://bucket)", self.uri))?;
        if !SCHEMES.contains(&scheme) {
            return Err(format!(
                "location uri {:?}: unknown scheme {scheme:?} (known: {})",
                self.uri,
                SCHEMES.join(", ")
            ));
        }
        if scheme != "file" && rest.trim_matches('/').is_empty() {
            return Err(format!("location uri {:?} names no bucket or host", self.uri));
        }
        Ok(scheme)
    }

    /// What the location reaches, fields relative to it (`uri`, `endpoint`, `key_file`,
    /// `credentials.file`), read as `weir-storage` opens it: a `file://` URI is the local
    /// folder (`file://x` is `/x`); `s3`, `azblob`, `gcs` the bucket or container; `sftp`
    /// and `ftp` the host and port (without `user@`); a custom `endpoint` its URL's scheme,
    /// host and port; the SFTP key and a credentials file are local paths.
    pub fn reach(&self) -> Reach {
        let mut r = Reach::default();
        match self.uri.split_once("://") {
            Some(("file", rest)) => {
                r.path("uri", if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") });
            }
            Some((scheme, rest)) => {
                let authority = rest.split('/').next().unwrap_or("");
                match scheme {
                    "sftp" | "ftp" => r.authority("uri", scheme, authority),
                    // The bucket or container, whole: a name that is not a plain one is refused.
                    _ => r.push(crate::sandbox::Touch::Endpoint {
                        field: "uri".into(),
                        scheme: scheme.to_ascii_lowercase(),
                        host: authority.to_ascii_lowercase(),
                        port: None,
                    }),
                }
            }
            // No scheme (refused by `check`): a relative path, which a policy refuses too.
            None => r.path("uri", self.uri.clone()),
        }
        if let Some(e) = &self.endpoint {
            r.url("endpoint", e);
        }
        if let Some(k) = &self.key_file {
            r.path("key_file", k.clone());
        }
        crate::sandbox::credentials_ref(&mut r, "credentials", self.credentials.as_ref());
        r
    }

    /// Checks the spec; the error names the problem.
    pub fn check(&self) -> Result<(), String> {
        if self.uri.contains('\0') || self.uri.contains('?') || self.uri.contains('#') {
            return Err(format!(
                "location uri {:?} may not hold NUL, '?' or '#' (options are fields of the location)",
                self.uri
            ));
        }
        if let Some(userinfo) = self.uri.split_once("://").and_then(|(_, r)| r.split('/').next()) {
            if userinfo.split('@').next().is_some_and(|u| u.contains(':')) && userinfo.contains('@') {
                return Err(format!(
                    "location uri {:?} carries a password: give credentials by reference instead",
                    redact_uri(&self.uri)
                ));
            }
        }
        let scheme = self.scheme()?;
        if let Some(CredentialsRef::Env(p)) = &self.credentials {
            if !crate::validate::is_env_name(p) {
                return Err(format!(
                    "credentials.env must be an environment variable prefix, got {p:?} ({})",
                    crate::validate::ENV_NAME_RULE
                ));
            }
        }
        match self.known_hosts.as_deref() {
            None | Some("strict") | Some("add") | Some("accept") => {}
            Some(k) => return Err(format!("known_hosts must be strict, add or accept, got {k:?}")),
        }
        if scheme != "sftp" && (self.key_file.is_some() || self.known_hosts.is_some()) {
            return Err("key_file and known_hosts apply to sftp locations only".into());
        }
        Ok(())
    }
}

/// A URI with any `user:password@` reduced to `user@…`, for messages.
pub fn redact_uri(uri: &str) -> String {
    match uri.split_once("://") {
        Some((s, rest)) => match rest.split_once('@') {
            Some((user, host)) if !user.contains('/') => {
                format!("{s}://{}@{host}", user.split(':').next().unwrap_or(""))
            }
            _ => uri.to_string(),
        },
        None => uri.to_string(),
    }
}

/// A file as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFile {
    /// Path below the location's root, `/`-separated, no leading slash.
    pub path: String,
    pub size: u64,
    /// Last modified, ms since the epoch (0 when the backend does not say).
    #[serde(default)]
    pub modified_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl SeenFile {
    /// What makes this version of the file different from another: size, modification
    /// time and ETag. A change in any of them is a changed file.
    pub fn fingerprint(&self) -> String {
        format!("{}:{}:{}", self.size, self.modified_ms, self.etag.as_deref().unwrap_or(""))
    }
}

/// A watch: a location, what to pick up there, how often to look, and what to start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    pub name: String,
    pub location: LocationSpec,
    /// Glob patterns relative to the location (`*.csv`, `**/*.json.gz`).
    pub patterns: Vec<String>,
    /// How often to list (default 5m).
    #[serde(default, with = "crate::duration::option")]
    pub poll_interval: Option<Duration>,
    /// The job each new or changed file starts: a trigger rule without `on` (its params
    /// and step configs may use `$data.path`, `$data.uri`, `$data.location`, `$data.size`…).
    pub start: Value,
}

/// A watches file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watches {
    #[serde(default)]
    pub watches: Vec<WatchSpec>,
}

impl Watches {
    /// Reads and checks a watches file (YAML parsed to a value by the caller).
    pub fn from_value(v: Value) -> Result<Watches, String> {
        let w: Watches = serde_json::from_value(v).map_err(|e| format!("bad watches: {e}"))?;
        let mut names = std::collections::HashSet::new();
        for watch in &w.watches {
            crate::validate::check_name("watch name", &watch.name, 64).map_err(|e| e.0)?;
            if !names.insert(watch.name.as_str()) {
                return Err(format!("watch {:?} is defined twice", watch.name));
            }
            watch.location.check().map_err(|e| format!("watch {:?}: {e}", watch.name))?;
            if watch.patterns.is_empty() {
                return Err(format!("watch {:?}: give at least one pattern (e.g. \"*.csv\")", watch.name));
            }
            if watch.poll_interval.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(format!("watch {:?}: poll_interval must be at least 1s", watch.name));
            }
            watch.rule().map_err(|e| format!("watch {:?}: start: {e}", watch.name))?;
        }
        Ok(w)
    }
}

impl WatchSpec {
    /// The trigger rule its `start` describes.
    pub fn rule(&self) -> Result<crate::trigger::TriggerRules, String> {
        let mut start = self.start.clone();
        let Some(obj) = start.as_object_mut() else {
            return Err("must be an object (namespace, job_name, template/params or steps)".into());
        };
        obj.insert("name".into(), json!(self.name));
        obj.insert("on".into(), json!(FILE_DISCOVERED));
        crate::trigger::TriggerRules::from_value(json!({ "rules": [start] }))
    }

    /// What the watch's listing reaches (`location.*`); the jobs it starts are checked
    /// at their submission like any other.
    pub fn reach(&self) -> Reach {
        let mut r = Reach::default();
        r.merge("location", self.location.reach());
        r
    }

    /// The poll interval in force.
    pub fn interval(&self) -> Duration {
        self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL)
    }
}

/// The event of one discovered file version. Its id is a name-based UUID of the watch, the
/// path, the fingerprint and the re-drive generation: the same version discovered twice
/// (two replicas, a crash and a retry) is one event and starts one job.
pub fn discovery_event(
    watch: &str,
    location: &LocationSpec,
    file: &SeenFile,
    generation: u32,
    time: &str,
) -> CloudEvent {
    let name = format!("{watch}\n{}\n{}\n{generation}", file.path, file.fingerprint());
    let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()).to_string();
    let mut shown = location.clone();
    shown.uri = redact_uri(&shown.uri);
    let uri = format!("{}/{}", shown.uri.trim_end_matches('/'), file.path);
    CloudEvent {
        specversion: crate::events::SPEC_VERSION.into(),
        id,
        source: format!("weir://file-manager/{watch}"),
        ty: FILE_DISCOVERED.into(),
        subject: Some(uri.clone()),
        time: Some(time.to_string()),
        datacontenttype: Some("application/json".into()),
        data: Some(json!({
            "watch": watch,
            "path": file.path,
            "uri": uri,
            "size": file.size,
            "modified_ms": file.modified_ms,
            "etag": file.etag,
            "fingerprint": file.fingerprint(),
            "generation": generation,
            "location": shown,
        })),
        extensions: Default::default(),
    }
}

/// A `discover` step's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverStep {
    pub location: LocationSpec,
    pub patterns: Vec<String>,
    /// With a name, only files new or changed since this inventory last saw them.
    #[serde(default)]
    pub watch: Option<String>,
}

/// A `fetch` step's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchStep {
    /// Where the files are; absent = the location the upstream `discover` reported.
    pub location: Option<LocationSpec>,
    /// Paths below the location; empty = the files the upstream steps reported.
    pub paths: Vec<String>,
    /// Downloads at once (default 10).
    pub concurrency: Option<usize>,
    /// Bytes per read (default 10 MiB).
    pub chunk_bytes: Option<u64>,
    /// Attempts at a file whose checksum does not match (default 3), then quarantine.
    pub verify_attempts: Option<u32>,
    /// Take only the files whose path hashes to shard `index` of `of` (parallel branches).
    pub shard: Option<Shard>,
}

/// One of `of` disjoint shards of a file list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub index: u32,
    pub of: u32,
}

impl Shard {
    /// Whether `path` belongs to this shard (a stable hash, the same on every host).
    pub fn holds(&self, path: &str) -> bool {
        let h = Uuid::new_v5(&Uuid::NAMESPACE_URL, path.as_bytes());
        (h.as_u128() % u128::from(self.of.max(1))) as u32 == self.index
    }
}

/// A `probe` step's config: checks that a location answers — its credentials read, the
/// backend reachable, the folder or bucket there — before a job relies on it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStep {
    pub location: LocationSpec,
}

/// An `archive` step's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveStep {
    /// Where the source files are; absent = the location the upstream steps reported.
    pub location: Option<LocationSpec>,
    /// Paths below the location; empty = the files the upstream steps reported.
    pub paths: Vec<String>,
    /// Prefix (below the same location) to put processed files under (default `archive/`).
    pub prefix: Option<String>,
    /// `move` (default) or `copy`.
    pub mode: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(kind: &str, config: Option<&Value>) -> Result<T, String> {
    let v = config.cloned().unwrap_or_else(|| json!({}));
    serde_json::from_value(v).map_err(|e| format!("{kind} config: {e}"))
}

/// Whether `path` stays below the folder it is joined to: relative, no empty, `.` or
/// `..` segment. Paths a server or an upstream report names are checked with this before
/// they become local paths.
pub fn is_safe_relative(path: &str) -> bool {
    !path.contains('\0') && path.split('/').all(|s| !(s.is_empty() || s == "." || s == ".."))
}

fn check_paths(kind: &str, paths: &[String]) -> Result<(), String> {
    if paths.len() > MAX_PATHS {
        return Err(format!("{kind} config: {} paths, at most {MAX_PATHS}", paths.len()));
    }
    if let Some(p) = paths.iter().find(|p| p.is_empty() || p.contains('\0') || p.split('/').any(|s| s == "..")) {
        return Err(format!("{kind} config: path {p:?} is empty, holds NUL or climbs out with .."));
    }
    Ok(())
}

impl ProbeStep {
    pub fn parse(config: Option<&Value>) -> Result<Self, String> {
        let s: ProbeStep = parse("probe", config)?;
        s.location.check().map_err(|e| format!("probe config: {e}"))?;
        Ok(s)
    }

    /// What the step reaches: its `location`.
    pub fn reach(&self) -> Reach {
        location_reach(Some(&self.location))
    }
}

/// A step's `location.*`, if it names one (without one, the upstream step's, checked there).
fn location_reach(location: Option<&LocationSpec>) -> Reach {
    let mut r = Reach::default();
    if let Some(l) = location {
        r.merge("location", l.reach());
    }
    r
}

impl DiscoverStep {
    pub fn parse(config: Option<&Value>) -> Result<Self, String> {
        let s: DiscoverStep = parse("discover", config)?;
        s.location.check().map_err(|e| format!("discover config: {e}"))?;
        if s.patterns.is_empty() {
            return Err("discover config: give at least one pattern".into());
        }
        check_paths("discover", &s.patterns)?;
        Ok(s)
    }

    /// What the step reaches: its `location` (the patterns are below it).
    pub fn reach(&self) -> Reach {
        location_reach(Some(&self.location))
    }
}

impl FetchStep {
    pub fn parse(config: Option<&Value>) -> Result<Self, String> {
        let s: FetchStep = parse("fetch", config)?;
        if let Some(l) = &s.location {
            l.check().map_err(|e| format!("fetch config: {e}"))?;
        }
        check_paths("fetch", &s.paths)?;
        if s.concurrency.is_some_and(|c| !(1..=256).contains(&c)) {
            return Err("fetch config: concurrency must be 1..=256".into());
        }
        if s.chunk_bytes.is_some_and(|c| !(4096..=1 << 30).contains(&c)) {
            return Err("fetch config: chunk_bytes must be 4096..=1073741824".into());
        }
        if s.verify_attempts.is_some_and(|a| !(1..=20).contains(&a)) {
            return Err("fetch config: verify_attempts must be 1..=20".into());
        }
        if let Some(sh) = s.shard {
            if sh.of == 0 || sh.index >= sh.of {
                return Err(format!("fetch config: shard index {} must be below of {}", sh.index, sh.of));
            }
        }
        Ok(s)
    }

    /// What the step reaches: its `location` if given (its `paths` are below it, without
    /// `..`); without one, the location the upstream step reported, checked there.
    pub fn reach(&self) -> Reach {
        location_reach(self.location.as_ref())
    }
}

impl ArchiveStep {
    pub fn parse(config: Option<&Value>) -> Result<Self, String> {
        let s: ArchiveStep = parse("archive", config)?;
        if let Some(l) = &s.location {
            l.check().map_err(|e| format!("archive config: {e}"))?;
        }
        check_paths("archive", &s.paths)?;
        match s.mode.as_deref() {
            None | Some("move") | Some("copy") => {}
            Some(m) => return Err(format!("archive config: mode must be move or copy, got {m:?}")),
        }
        if let Some(p) = &s.prefix {
            check_paths("archive", std::slice::from_ref(p))?;
        }
        Ok(s)
    }

    /// What the step reaches: its `location` if given (its `paths` and `prefix` are
    /// below it, without `..`).
    pub fn reach(&self) -> Reach {
        location_reach(self.location.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(uri: &str) -> LocationSpec {
        LocationSpec { uri: uri.into(), ..Default::default() }
    }

    #[test]
    fn locations_are_checked_and_secrets_refused() {
        assert!(loc("s3://bucket/in").check().is_ok());
        assert!(loc("file:///data").check().is_ok());
        assert!(loc("nfs://x").check().unwrap_err().contains("unknown scheme"));
        assert!(loc("s3://").check().unwrap_err().contains("no bucket"));
        assert!(loc("/data").check().unwrap_err().contains("no scheme"));
        let e = loc("sftp://bob:hunter2@host/x").check().unwrap_err();
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
        assert!(loc("sftp://bob@host:2222/x").check().is_ok());
        let mut l = loc("s3://b");
        l.key_file = Some("/k".into());
        assert!(l.check().unwrap_err().contains("sftp"));
        l = loc("s3://b");
        l.credentials = Some(CredentialsRef::Env("BAD-NAME".into()));
        assert!(l.check().is_err());
        assert_eq!(redact_uri("ftp://u:p@h:21/x"), "ftp://u@h:21/x");
    }

    #[test]
    fn fingerprints_change_with_size_time_or_etag() {
        let f = SeenFile { path: "a.csv".into(), size: 10, modified_ms: 5, etag: Some("e".into()) };
        let mut g = f.clone();
        assert_eq!(f.fingerprint(), g.fingerprint());
        g.etag = Some("f".into());
        assert_ne!(f.fingerprint(), g.fingerprint());
        g = f.clone();
        g.size = 11;
        assert_ne!(f.fingerprint(), g.fingerprint());
    }

    #[test]
    fn the_same_version_is_one_event_and_one_run() {
        let f = SeenFile { path: "in/a.csv".into(), size: 10, modified_ms: 5, etag: None };
        let l = loc("sftp://bob@host/upload");
        let a = discovery_event("w", &l, &f, 0, "t1");
        let b = discovery_event("w", &l, &f, 0, "t2");
        assert_eq!(a.id, b.id);
        assert_eq!(crate::trigger::run_id(&a), crate::trigger::run_id(&b));
        assert_ne!(a.id, discovery_event("w", &l, &f, 1, "t1").id, "a re-drive is a new run");
        let data = a.data.expect("data");
        assert_eq!(data["uri"], "sftp://bob@host/upload/in/a.csv");
    }

    #[test]
    fn watches_read_and_their_start_becomes_a_job() {
        let w = Watches::from_value(json!({"watches": [{
            "name": "trades", "location": {"uri": "file:///in"}, "patterns": ["*.csv"], "poll_interval": "30s",
            "start": {"namespace": "files", "job_name": "ingest", "steps": [
                {"id": "fetch", "kind": "fetch", "queue": "file", "config": {"location": "$data.location", "paths": ["$data.path"]}}
            ]}
        }]}))
        .expect("valid");
        let watch = &w.watches[0];
        assert_eq!(watch.interval(), Duration::from_secs(30));
        let e = discovery_event(
            "trades",
            &watch.location,
            &SeenFile { path: "a.csv".into(), size: 1, modified_ms: 0, etag: None },
            0,
            "t",
        );
        let job = watch.rule().expect("rule").job_for(&e).expect("job");
        let cfg = job.steps[0].config.as_ref().expect("config");
        assert_eq!(cfg["paths"], json!(["a.csv"]));
        assert_eq!(cfg["location"]["uri"], "file:///in");
        assert!(Watches::from_value(
            json!({"watches": [{"name": "x", "location": {"uri": "file:///in"}, "patterns": [], "start": {}}]})
        )
        .unwrap_err()
        .contains("pattern"));
    }

    #[test]
    fn step_configs_are_checked() {
        assert!(FetchStep::parse(Some(&json!({"paths": ["../etc/passwd"]}))).unwrap_err().contains(".."));
        assert!(FetchStep::parse(Some(&json!({"shard": {"index": 2, "of": 2}}))).is_err());
        assert!(FetchStep::parse(None).is_ok());
        assert!(DiscoverStep::parse(Some(&json!({"location": {"uri": "s3://b"}}))).is_err());
        assert!(ArchiveStep::parse(Some(&json!({"mode": "shred"}))).unwrap_err().contains("shred"));
        let shards: Vec<u32> =
            (0..3).map(|i| Shard { index: i, of: 3 }).map(|s| u32::from(s.holds("a/b.csv"))).collect();
        assert_eq!(shards.iter().sum::<u32>(), 1, "a path is in exactly one shard");
    }
}
