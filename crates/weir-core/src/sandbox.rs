//! What a job may touch outside the platform: the local paths and the remote endpoints
//! its steps name ([`Touch`], gathered per step as a [`Reach`]), and the per-namespace
//! [`Policy`] that allows them — local paths only under configured roots, endpoints only
//! from an allow-list of scheme and host patterns. The master refuses a job at
//! submission with a [`Refusal`] naming the step, the field and the rule
//! ([`Policy::check_job`] on the validated spec).
//!
//! Pure and lexical: no file system, no DNS. A manager that resolves symlinks or
//! follows a server's next-page URL re-checks with [`normalize`], [`under_roots`],
//! [`Touch::url`] and [`Policy::check`].
//!
//! What each kind reaches (read from its typed config, see [`crate::catalog::step_reach`]):
//!
//! | kinds | fields |
//! |-------|--------|
//! | `noop`, `sleep`, `fail` | nothing |
//! | `probe`, `discover` (file) | `location` |
//! | `fetch`, `archive` | `location` if given (its `paths` and `prefix` are below it, `..` refused by the step's own check) |
//! | `convert`, `quality`, `store`, `classify` | `inputs[i]` (a path, a `file://` URI, or a staged object's URI), `sinks[i]`, `classify.hash_key.file` |
//! | `reconcile` | `sinks[i]` |
//! | `collect`, `probe`, `connect`, `check_security`, `check_tls` (api) | `base_url` (joined with `path`), `auth.token_url`, `auth.credentials.file`, `fallbacks[i].base_url` (joined with `path`), `fallbacks[i].auth.*`, `fallbacks[i].location`, `security.ca.file` |
//! | `analyze_failure`, `plan_recovery`, `recover`, `recover_files` | `resource.*` as `collect` |
//! | `consume`, `probe` (stream) | `source.brokers` (kafka), `source.servers` (nats), `source.stream` (kinesis), `source.project` (pubsub), `source.endpoint`, `source.credentials.file`, `format.schema_file`, `sinks[i]`, `dead_letter.path` |
//!
//! where a `location` is `uri` (a `file://` folder is a path; `s3`/`azblob`/`gcs` the
//! bucket or container; `sftp`/`ftp` the host and port), `endpoint` (its URL's scheme,
//! host and port), `key_file` and `credentials.file`; and a sink is a Parquet `path`
//! (a local directory) or its `location`, a Kafka topic's `brokers` (scheme `kafka`) and
//! `credentials.file`, a Parquet sink's `encryption.key.file` and
//! `encryption.column_keys.<column>.file`.
//!
//! Secret files (`credentials: {file: …}`, `{file: …}` keys, CA bundles) are paths like
//! any other: a namespace reads only the secrets under its roots. Secrets and URLs in the
//! managers' environment (`credentials: {env: PREFIX}` for `PREFIX_<KEY>`, `{env: NAME}` keys, `url_env`)
//! are [`Touch::Env`]: a namespace reads only the variables its rule's `env` patterns
//! allow, so one team cannot name another's credentials.
//!
//! Each manager checks a task's reach again before running it, with symbolic links
//! resolved (`weir_worker::sandbox`), and the API manager holds every request it sends to
//! the same rule as it runs — a server's next-page URL (`next_url`, `link_header`) and
//! each redirect (`weir_worker::sandbox::Guard`). Not checked: the host in a PostgreSQL
//! sink's and a RabbitMQ source's URL (the operator's variable, which the `env` rule
//! guards); files that upstream steps report (staged by Weir itself).
//! Watches ([`crate::files::WatchSpec::reach`]) and API profiles are the operator's
//! configuration, not a job's; the jobs a watch starts are checked like any other.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The error kind of a task a manager refused to run for the sandbox (the master audits
/// each such failure).
pub const REFUSED_KIND: &str = "sandbox";

/// One thing a step reaches outside the platform.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Touch {
    /// A local file or directory, as the step names it (absolute or relative).
    Path {
        /// Where the step's config names it, for messages (`inputs[0]`, `location.key_file`).
        field: String,
        path: String,
    },
    /// A remote endpoint: scheme (`s3`, `sftp`, `ftp`, `azblob`, `gcs`, `https`, `http`,
    /// `kafka`, `nats`, `kinesis`, `pubsub` …) and host (for object stores the bucket or
    /// container; a custom `endpoint` URL is a touch of its own).
    Endpoint {
        /// Where the step's config names it, for messages (`base_url`, `source.brokers`).
        field: String,
        /// Lower case.
        scheme: String,
        /// Lower case, without brackets for an IPv6 literal; not checked here
        /// ([`Policy::check`] refuses a host that is not a plain name or address).
        host: String,
        /// The port, when the config names one.
        port: Option<u16>,
    },
    /// An environment variable of the manager a credential or URL is read from (another
    /// team's secrets live in the same process's environment).
    Env {
        /// Where the step's config names it (`credentials.env`, `url_env`).
        field: String,
        /// The variable, or the prefix of the variables read (`FINANCE_S3` for
        /// `FINANCE_S3_ACCESS_KEY_ID` …: `<name>_<KEY>`).
        name: String,
        /// Whether `name` is a prefix.
        prefix: bool,
    },
}

impl Touch {
    /// A local path touch.
    pub fn path(field: impl Into<String>, path: impl Into<String>) -> Touch {
        Touch::Path { field: field.into(), path: path.into() }
    }

    /// The endpoint a URL (`scheme://[user@]host[:port]/…`) connects to. The authority
    /// ends at the first `/`, `\`, `?` or `#`, as a WHATWG URL parser ends it; without
    /// `://` the text is read as `https://` plus it.
    pub fn url(field: impl Into<String>, url: &str) -> Touch {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("https".to_string(), url),
        };
        let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or("");
        Touch::authority(field, &scheme, authority)
    }

    /// The endpoint of an authority, `[user@]host[:port]` or `[user@][v6]:port`, of `scheme`.
    pub fn authority(field: impl Into<String>, scheme: &str, authority: &str) -> Touch {
        let (host, port) = host_port(authority);
        Touch::Endpoint { field: field.into(), scheme: scheme.to_ascii_lowercase(), host, port }
    }

    /// Where the step's config names it.
    pub fn field(&self) -> &str {
        match self {
            Touch::Path { field, .. } | Touch::Endpoint { field, .. } | Touch::Env { field, .. } => field,
        }
    }

    /// The same touch with its field under `prefix` (`location` + `uri` → `location.uri`).
    pub fn within(self, prefix: &str) -> Touch {
        let under = |f: String| if prefix.is_empty() { f } else { format!("{prefix}.{f}") };
        match self {
            Touch::Path { field, path } => Touch::Path { field: under(field), path },
            Touch::Endpoint { field, scheme, host, port } => {
                Touch::Endpoint { field: under(field), scheme, host, port }
            }
            Touch::Env { field, name, prefix } => Touch::Env { field: under(field), name, prefix },
        }
    }
}

impl fmt::Display for Touch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Touch::Path { path, .. } => write!(f, "path {path:?}"),
            Touch::Endpoint { scheme, host, port, .. } => f.write_str(&show_endpoint(scheme, host, *port)),
            Touch::Env { name, prefix: false, .. } => write!(f, "environment variable {name}"),
            Touch::Env { name, prefix: true, .. } => write!(f, "environment variables {name}_*"),
        }
    }
}

/// `scheme://host[:port]`, an IPv6 host in brackets.
fn show_endpoint(scheme: &str, host: &str, port: Option<u16>) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    }
}

/// A host and port from an authority: any `user@` dropped, an IPv6 literal's brackets
/// removed, the host in lower case without a trailing dot. A port that is not a number
/// leaves the whole text as the host, which no check accepts.
fn host_port(authority: &str) -> (String, Option<u16>) {
    let a = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let whole = || (a.to_ascii_lowercase(), None);
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, rest)) => match rest.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(p)) => (h, Some(p)),
                _ => return whole(),
            },
            None => return whole(),
        }
    } else {
        match a.rsplit_once(':') {
            // Several colons without brackets: an IPv6 literal without a port.
            Some((h, _)) if h.contains(':') => (a, None),
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, Some(p)),
                Err(_) => return whole(),
            },
            None => (a, None),
        }
    };
    let mut host = host.to_ascii_lowercase();
    if host.len() > 1 && host.ends_with('.') && !host.contains(':') {
        host.pop();
    }
    (host, port)
}

/// Whether `host` is a plain name (labels of letters, digits, `-` and `_`; object
/// stores' bucket names included) or an IPv6 literal (hex digits, `.` and at least two
/// `:`). Anything else — `%`-escapes, non-ASCII, `@`, a placeholder, `host:` with a port
/// that is not a number — could name another host to a URL parser than to this check,
/// so it is refused.
fn valid_host(host: &str) -> bool {
    if host.contains(':') {
        return host.matches(':').count() >= 2 && host.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    }
    !host.is_empty()
        && host.len() <= 255
        && host.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)))
}

/// The port a scheme connects to when none is named (a pattern's port is compared with it).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "sftp" => Some(22),
        "ftp" => Some(21),
        "kafka" => Some(9092),
        "nats" => Some(4222),
        "amqp" => Some(5672),
        "amqps" => Some(5671),
        "postgres" | "postgresql" => Some(5432),
        _ => None,
    }
}

/// Every place a step (or a job) reaches, in the order its config names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach(pub Vec<Touch>);

impl Reach {
    /// Adds a touch.
    pub fn push(&mut self, touch: Touch) {
        self.0.push(touch);
    }

    /// Adds a local path.
    pub fn path(&mut self, field: impl Into<String>, path: impl Into<String>) {
        self.0.push(Touch::path(field, path));
    }

    /// Adds an environment variable (or, with `prefix`, the variables it begins).
    pub fn env(&mut self, field: impl Into<String>, name: &str, prefix: bool) {
        self.0.push(Touch::Env { field: field.into(), name: name.to_string(), prefix });
    }

    /// Adds the endpoint of a URL (see [`Touch::url`]).
    pub fn url(&mut self, field: impl Into<String>, url: &str) {
        self.0.push(Touch::url(field, url));
    }

    /// Adds the endpoint of an authority (see [`Touch::authority`]).
    pub fn authority(&mut self, field: impl Into<String>, scheme: &str, authority: &str) {
        self.0.push(Touch::authority(field, scheme, authority));
    }

    /// Adds each `host:port` of a comma-separated broker or server list as an endpoint of
    /// `scheme`; an entry's own `xxx://` prefix (`SSL://`, `nats://`, `tls://`) is dropped.
    pub fn servers(&mut self, field: &str, scheme: &str, list: &str) {
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let rest = s.split_once("://").map_or(s, |(_, r)| r);
            let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or("");
            self.authority(field, scheme, authority);
        }
    }

    /// Adds everything `other` reaches, its fields under `prefix` (empty: as they are).
    pub fn merge(&mut self, prefix: &str, other: Reach) {
        self.0.extend(other.0.into_iter().map(|t| t.within(prefix)));
    }

    /// Whether the step reaches nothing outside the platform.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The touches.
    pub fn iter(&self) -> std::slice::Iter<'_, Touch> {
        self.0.iter()
    }
}

/// The file a secret reference reads, if it is a file (its field is `<field>.file`).
pub(crate) fn secret_ref(reach: &mut Reach, field: &str, secret: &crate::secret::SecretRef) {
    match secret {
        crate::secret::SecretRef::File(p) => reach.path(format!("{field}.file"), p.clone()),
        crate::secret::SecretRef::Env(e) => reach.env(format!("{field}.env"), e, false),
    }
}

/// The file or the variables a credentials reference reads (its field is `<field>.file`
/// or `<field>.env`, a prefix).
pub(crate) fn credentials_ref(reach: &mut Reach, field: &str, credentials: Option<&crate::files::CredentialsRef>) {
    match credentials {
        Some(crate::files::CredentialsRef::File(p)) => reach.path(format!("{field}.file"), p.clone()),
        Some(crate::files::CredentialsRef::Env(e)) => reach.env(format!("{field}.env"), e, true),
        None => {}
    }
}

/// A path made absolute-and-plain without touching the file system: `.` and empty
/// segments dropped, `..` taking off the segment before it. Refused: a relative path (a
/// manager's working directory is no safe anchor), a `..` above `/`, a NUL byte.
pub fn normalize(path: &str) -> Result<PathBuf, String> {
    if path.contains('\0') {
        return Err("holds a NUL byte".into());
    }
    if !path.starts_with('/') {
        return Err("must be absolute (a manager's working directory is not a safe anchor)".into());
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            // The file system resolves `..` after symbolic links (`/root/link/..` is the
            // link target's parent), so a lexical answer could be wrong: refused outright.
            ".." => return Err("may not hold .. (name the path without it)".into()),
            s => parts.push(s),
        }
    }
    Ok(PathBuf::from(format!("/{}", parts.join("/"))))
}

/// Whether `path` lies under one of `roots`, component by component (`/data` holds
/// `/data` and `/data/x`, not `/database`). Both are taken as given: normalize them
/// first (or canonicalize them, to see through symlinks).
pub fn under_roots<R: AsRef<Path>>(path: &Path, roots: &[R]) -> bool {
    roots.iter().any(|r| path.starts_with(r.as_ref()))
}

/// One namespace's rule: the local roots and the endpoint patterns it may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Absolute root directories; a path is allowed under any of them.
    pub paths: Vec<String>,
    /// Endpoint patterns: `s3://bucket`, `https://api.example.com`, `https://*.example.com`
    /// (subdomains, not the domain itself), `kafka://broker:9092` (that port only),
    /// `kafka://*`, `api.example.com` (any scheme), `*` (anything).
    pub hosts: Vec<String>,
    /// The managers' environment variables a job may read credentials and URLs from:
    /// `FINANCE_PG_URL` (that one), `FINANCE_*` (those beginning so), `*` (any). `WEIR_…`
    /// variables are never a job's, whatever the rule.
    pub env: Vec<String>,
}

/// Whether an environment pattern allows `name` (a prefix reference reads `<name>_<KEY>`,
/// so it is allowed when every such variable is: the pattern is `*` or a prefix of `<name>_`).
fn env_allows(pattern: &str, name: &str, prefix: bool) -> bool {
    let read = if prefix { format!("{name}_") } else { name.to_string() };
    match pattern.strip_suffix('*') {
        Some(p) => read.starts_with(p),
        None => !prefix && pattern == name,
    }
}

fn check_env_pattern(p: &str) -> Result<(), String> {
    let body = p.strip_suffix('*').unwrap_or(p);
    if body.is_empty()
        || (body.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !body.starts_with(|c: char| c.is_ascii_digit()))
    {
        Ok(())
    } else {
        Err("is not a variable name, NAME_PREFIX* or *".into())
    }
}

/// A parsed host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    scheme: Option<String>,
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// Strict subdomains of this domain.
    Below(String),
}

impl HostPattern {
    fn parse(text: &str) -> Result<HostPattern, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("is empty".into());
        }
        let (scheme, rest) = match t.split_once("://") {
            Some((s, r)) => {
                let ok = s.starts_with(|c: char| c.is_ascii_alphabetic())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
                if !ok {
                    return Err(format!("scheme {s:?} is not a URI scheme"));
                }
                (Some(s.to_ascii_lowercase()), r)
            }
            None => (None, t),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '\\', '?', '#', '@']) {
            return Err("names a scheme, a host and a port, not a path, a query or a user".into());
        }
        if rest == "*" {
            return Ok(HostPattern { scheme, host: HostMatch::Any, port: None });
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => (h, Some(parse_port(p.strip_prefix(':').unwrap_or(p))?)),
                None => return Err("an IPv6 address lacks its closing ]".into()),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return Err("write an IPv6 address in brackets ([::1])".into()),
                Some((h, p)) => (h, Some(parse_port(p)?)),
                None => (rest, None),
            }
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.").map(str::to_string) {
            if !valid_host(&domain) || domain.contains(':') {
                return Err(format!("*.{domain}: the domain is not a host name"));
            }
            HostMatch::Below(domain)
        } else if valid_host(&host) {
            HostMatch::Exact(host)
        } else {
            return Err(format!("{host:?} is not a host name, an IPv6 address in brackets, *.domain or *"));
        };
        Ok(HostPattern { scheme, host, port })
    }

    fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Below(d) => {
                !host.contains(':')
                    && host.len() > d.len() + 1
                    && host.ends_with(d.as_str())
                    && host.as_bytes().get(host.len() - d.len() - 1) == Some(&b'.')
            }
        };
        host_ok && self.port.is_none_or(|p| port.or_else(|| default_port(scheme)) == Some(p))
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("port {p:?} is not a port number")),
    }
}

/// A rule with its patterns parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Compiled {
    rule: Rule,
    patterns: Vec<HostPattern>,
}

/// The namespace rule that applies to any namespace without its own.
pub const ANY_NAMESPACE: &str = "*";

/// Per-namespace rules; a namespace without its own rule takes the `*` rule; no rule at
/// all = nothing allowed. Read from the operator's file (`{namespaces: {"*": {paths: […],
/// hosts: […]}, finance: {…}}}`) or flags ([`Policy::with_default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: BTreeMap<String, Compiled>,
    everything: bool,
}

/// What a policy file holds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    namespaces: BTreeMap<String, Rule>,
}

/// Why a job may not run: the step, the field and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", place(.step, .field))]
pub struct Refusal {
    /// The step (`None` for a check outside a job).
    pub step: Option<String>,
    /// Where in the step's config (`inputs[0]`), empty when the whole step is refused.
    pub field: String,
    /// What is refused and which rule refuses it, naming what the rule allows.
    pub message: String,
}

fn place(step: &Option<String>, field: &str) -> String {
    match (step, field.is_empty()) {
        (Some(s), false) => format!("step {s:?} {field}: "),
        (Some(s), true) => format!("step {s:?}: "),
        (None, false) => format!("{field}: "),
        (None, true) => String::new(),
    }
}

impl Policy {
    /// Every path and every endpoint, for every namespace (the operator opted out).
    pub fn allow_all() -> Policy {
        Policy { rules: BTreeMap::new(), everything: true }
    }

    /// Reads and checks a policy (YAML parsed to a value by the caller; quote `"*"` in
    /// YAML): roots absolute without `..`, patterns well-formed; the error names the
    /// namespace and the entry.
    pub fn from_value(v: Value) -> Result<Policy, String> {
        let file: PolicyFile = serde_json::from_value(v).map_err(|e| format!("bad sandbox policy: {e}"))?;
        let mut rules = BTreeMap::new();
        for (ns, rule) in file.namespaces {
            if ns != ANY_NAMESPACE {
                crate::validate::check_name("namespace", &ns, 64)
                    .map_err(|e| format!("sandbox.namespaces.{ns:?}: {}", e.0))?;
            }
            let compiled = compile(&ns, rule)?;
            rules.insert(ns, compiled);
        }
        Ok(Policy { rules, everything: false })
    }

    /// A policy of one `*` rule (from flags).
    pub fn with_default(paths: Vec<String>, hosts: Vec<String>, env: Vec<String>) -> Result<Policy, String> {
        let mut rules = BTreeMap::new();
        rules.insert(ANY_NAMESPACE.to_string(), compile(ANY_NAMESPACE, Rule { paths, hosts, env })?);
        Ok(Policy { rules, everything: false })
    }

    /// Whether this is [`Policy::allow_all`].
    pub fn allows_everything(&self) -> bool {
        self.everything
    }

    /// The rule `namespace` is held to and its key (the namespace or `*`); none when it
    /// has no rule (nothing is allowed) or when everything is.
    pub fn rule(&self, namespace: &str) -> Option<(&str, &Rule)> {
        self.compiled(namespace).map(|(k, c)| (k, &c.rule))
    }

    fn compiled(&self, namespace: &str) -> Option<(&str, &Compiled)> {
        self.rules
            .get_key_value(namespace)
            .or_else(|| self.rules.get_key_value(ANY_NAMESPACE))
            .map(|(k, c)| (k.as_str(), c))
    }

    /// Checks everything `reach` touches against `namespace`'s rule; the refusal names
    /// the first touch refused and the rule (its `step` is left for the caller).
    pub fn check(&self, namespace: &str, reach: &Reach) -> Result<(), Refusal> {
        if self.everything {
            return Ok(());
        }
        for touch in reach.iter() {
            self.check_touch(namespace, touch)?;
        }
        Ok(())
    }

    fn check_touch(&self, namespace: &str, touch: &Touch) -> Result<(), Refusal> {
        let refuse = |message: String| Refusal { step: None, field: touch.field().to_string(), message };
        let Some((key, c)) = self.compiled(namespace) else {
            return Err(refuse(format!(
                "{touch} is not allowed: namespace {namespace:?} has no sandbox rule and there is no \
                 {ANY_NAMESPACE:?} rule, so nothing is — rule sandbox.namespaces.{namespace:?}"
            )));
        };
        match touch {
            Touch::Path { path, .. } => {
                let rule = format!("rule sandbox.namespaces.{key:?}.paths");
                let norm = normalize(path).map_err(|e| refuse(format!("path {path:?} {e} — {rule}")))?;
                if under_roots(&norm, &c.rule.paths) {
                    return Ok(());
                }
                let shown = match norm.to_str() {
                    Some(n) if n != path.as_str() => format!("path {path:?} ({n})"),
                    _ => format!("path {path:?}"),
                };
                let roots = if c.rule.paths.is_empty() { "none".to_string() } else { c.rule.paths.join(", ") };
                Err(refuse(format!(
                    "{shown} is outside the allowed roots of namespace {namespace:?} ({roots}) — {rule}"
                )))
            }
            Touch::Env { name, prefix, .. } => {
                if c.rule.env.iter().any(|p| env_allows(p, name, *prefix)) {
                    return Ok(());
                }
                let allowed = if c.rule.env.is_empty() { "none".to_string() } else { c.rule.env.join(", ") };
                Err(refuse(format!(
                    "{touch} is not among the variables allowed for namespace {namespace:?} ({allowed}) — \
                     rule sandbox.namespaces.{key:?}.env"
                )))
            }
            Touch::Endpoint { scheme, host, port, .. } => {
                let rule = format!("rule sandbox.namespaces.{key:?}.hosts");
                if !valid_host(host) {
                    return Err(refuse(format!(
                        "{scheme} host {host:?} is not a plain host name or address (letters, digits, '-', '_', '.'; \
                         IPv6 in brackets) — {rule}"
                    )));
                }
                if c.patterns.iter().any(|p| p.matches(scheme, host, *port)) {
                    return Ok(());
                }
                let allowed = if c.rule.hosts.is_empty() { "none".to_string() } else { c.rule.hosts.join(", ") };
                Err(refuse(format!(
                    "{} is not among the hosts allowed for namespace {namespace:?} ({allowed}) — {rule}",
                    show_endpoint(scheme, host, *port)
                )))
            }
        }
    }

    /// Checks every step of a validated job (`ValidJob.spec`: templates expanded,
    /// `{params.…}` bound) and every compensation step, via
    /// [`crate::catalog::step_reach`]; the refusal names the step.
    pub fn check_job(&self, spec: &crate::spec::JobSpec) -> Result<(), Refusal> {
        if self.everything {
            return Ok(());
        }
        let namespace =
            if spec.namespace.is_empty() { crate::validate::DEFAULT_NAMESPACE } else { spec.namespace.as_str() };
        for s in &spec.steps {
            let whole = |message: String| Refusal { step: Some(s.id.clone()), field: String::new(), message };
            let queue: crate::catalog::Queue = s.queue.parse().map_err(whole)?;
            let reach = crate::catalog::step_reach(&s.kind, queue, s.config.as_ref()).map_err(whole)?;
            self.check(namespace, &reach).map_err(|r| Refusal { step: Some(s.id.clone()), ..r })?;
            if let Some(c) = &s.compensation {
                let cq = match &c.queue {
                    Some(q) => q.parse::<crate::catalog::Queue>().map_err(whole)?,
                    None => queue,
                };
                let reach = crate::catalog::step_reach(&c.kind, cq, c.config.as_ref())
                    .map_err(|e| whole(format!("compensation: {e}")))?;
                self.check(namespace, &reach).map_err(|r| Refusal {
                    step: Some(s.id.clone()),
                    field: format!("compensation {}", r.field),
                    message: r.message,
                })?;
            }
        }
        Ok(())
    }
}

/// Checks and normalizes one namespace's rule; the error names the namespace and entry.
fn compile(ns: &str, rule: Rule) -> Result<Compiled, String> {
    let mut paths = Vec::with_capacity(rule.paths.len());
    for (i, p) in rule.paths.iter().enumerate() {
        let at = format!("sandbox.namespaces.{ns:?}.paths[{i}] {p:?}");
        if p.split('/').any(|s| s == "..") {
            return Err(format!("{at}: a root may not hold .."));
        }
        let root = normalize(p).map_err(|e| format!("{at}: a root {e}"))?;
        paths.push(root.to_string_lossy().into_owned());
    }
    let mut patterns = Vec::with_capacity(rule.hosts.len());
    for (i, h) in rule.hosts.iter().enumerate() {
        patterns.push(HostPattern::parse(h).map_err(|e| format!("sandbox.namespaces.{ns:?}.hosts[{i}] {h:?}: {e}"))?);
    }
    for (i, e) in rule.env.iter().enumerate() {
        check_env_pattern(e).map_err(|m| format!("sandbox.namespaces.{ns:?}.env[{i}] {e:?}: {m}"))?;
    }
    Ok(Compiled { rule: Rule { paths, hosts: rule.hosts, env: rule.env }, patterns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{step_reach, Queue};
    use crate::spec::{CompensationSpec, JobSpec, StepSpec};
    use serde_json::json;

    fn job(namespace: &str, steps: Vec<(&str, &str, &str, Value)>) -> JobSpec {
        let spec = JobSpec {
            namespace: namespace.into(),
            name: "j".into(),
            steps: steps
                .into_iter()
                .map(|(id, kind, queue, config)| StepSpec {
                    id: id.into(),
                    kind: kind.into(),
                    queue: queue.into(),
                    config: Some(config),
                    ..StepSpec::default()
                })
                .collect(),
            ..JobSpec::default()
        };
        crate::validate::validate(spec).expect("valid job").spec
    }

    fn data_root() -> Policy {
        Policy::with_default(
            vec!["/srv/weir/data".into()],
            vec!["s3://lake".into(), "https://*.shop.test".into()],
            vec!["*".into()],
        )
        .expect("policy")
    }

    fn reach(touches: Vec<Touch>) -> Reach {
        Reach(touches)
    }

    fn endpoint(url: &str) -> Reach {
        reach(vec![Touch::url("f", url)])
    }

    #[test]
    fn etc_shadow_as_a_convert_input_is_refused_naming_the_rule() {
        let spec = job("", vec![("convert", "convert", "batch", json!({"inputs": ["/etc/shadow"]}))]);
        let e = data_root().check_job(&spec).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "step \"convert\" inputs[0]: path \"/etc/shadow\" is outside the allowed roots of namespace \"default\" \
             (/srv/weir/data) — rule sandbox.namespaces.\"*\".paths"
        );
        assert_eq!((e.step.as_deref(), e.field.as_str()), (Some("convert"), "inputs[0]"));
        let ok = job("", vec![("convert", "convert", "batch", json!({"inputs": ["file:///srv/weir/data/in/a.csv"]}))]);
        assert!(data_root().check_job(&ok).is_ok());
        assert!(Policy::allow_all().check_job(&spec).is_ok());
    }

    #[test]
    fn a_file_location_outside_the_roots_is_refused() {
        let spec =
            job("", vec![("find", "discover", "file", json!({"location": {"uri": "file:///etc"}, "patterns": ["*"]}))]);
        let e = data_root().check_job(&spec).expect_err("refused");
        assert_eq!(e.field, "location.uri");
        assert!(e.message.contains("\"/etc\"") && e.message.contains(".paths"), "{e}");
    }

    #[test]
    fn climbing_out_and_relative_paths_are_refused() {
        let p = data_root();
        let e = p.check("default", &reach(vec![Touch::path("inputs[0]", "/srv/weir/data/../../../etc/passwd")]));
        let e = e.expect_err("climbs out");
        assert!(e.message.contains("may not hold .."), "{e}");
        let e = p.check("default", &reach(vec![Touch::path("x", "/../etc")])).expect_err("above /");
        assert!(e.message.contains("may not hold .."), "{e}");
        // Even one that would stay inside lexically: through a link it may not.
        let e = p.check("default", &reach(vec![Touch::path("x", "/srv/weir/data/link/../a.csv")]));
        assert!(e.expect_err("..").message.contains("may not hold .."));
        let e = p.check("default", &reach(vec![Touch::path("x", "data/a.csv")])).expect_err("relative");
        assert!(e.message.contains("must be absolute") && e.message.contains("sandbox.namespaces"), "{e}");
        let e = p.check("default", &reach(vec![Touch::path("x", "/srv/weir/data/a\0b")])).expect_err("nul");
        assert!(e.message.contains("NUL"), "{e}");
        assert!(p.check("default", &reach(vec![Touch::path("x", "/srv/weir/data/./in//a.csv")])).is_ok());
        assert_eq!(normalize("/a/./b//c/").expect("normal"), PathBuf::from("/a/b/c"));
        assert_eq!(normalize("/").expect("root"), PathBuf::from("/"));
        let spec = job("", vec![("convert", "convert", "batch", json!({"inputs": ["in/a.csv"]}))]);
        assert!(data_root().check_job(&spec).expect_err("relative").message.contains("must be absolute"));
    }

    #[test]
    fn a_root_holds_its_components_not_a_longer_name() {
        let p = Policy::with_default(vec!["/data/".into()], vec![], vec!["*".into()]).expect("policy");
        for ok in ["/data", "/data/x", "/data/x/y.csv"] {
            assert!(p.check("default", &reach(vec![Touch::path("x", ok)])).is_ok(), "{ok}");
        }
        assert!(p.check("default", &reach(vec![Touch::path("x", "/database")])).is_err());
        assert!(p.check("default", &reach(vec![Touch::path("x", "/dat")])).is_err());
        assert!(under_roots(Path::new("/data/x"), &["/data"]));
        assert!(!under_roots(Path::new("/database"), &["/data"]));
    }

    #[test]
    fn a_parquet_sink_under_the_root_is_allowed_and_an_object_store_needs_its_bucket() {
        let store = |sink: Value| job("", vec![("store", "store", "batch", json!({"sinks": [sink]}))]);
        let p = data_root();
        assert!(p.check_job(&store(json!({"type": "parquet", "path": "/srv/weir/data/lake/trades"}))).is_ok());
        let e = p.check_job(&store(json!({"type": "parquet", "path": "/var/lib/other"}))).expect_err("outside");
        assert_eq!(e.field, "sinks[0].path");
        let lake = |uri: &str| json!({"type": "parquet", "path": "trades", "location": {"uri": uri}});
        assert!(p.check_job(&store(lake("s3://lake/prefix"))).is_ok());
        let e = p.check_job(&store(lake("s3://other-lake/prefix"))).expect_err("bucket");
        assert_eq!(e.field, "sinks[0].location.uri");
        assert!(e.message.contains("s3://other-lake is not among the hosts allowed") && e.message.contains(".hosts"));
        assert!(e.message.contains("(s3://lake, https://*.shop.test)"), "{e}");
        // A PostgreSQL sink's URL is the manager's: the job names its variable.
        assert!(p
            .check_job(&store(json!({"type": "postgres", "url_env": "PG_URL", "table": "public.trades"})))
            .is_ok());
    }

    #[test]
    fn a_namespace_reads_only_the_variables_its_rule_allows() {
        let p = Policy::from_value(json!({"namespaces": {
            "finance": {"paths": ["/srv/finance"], "hosts": ["*"], "env": ["FINANCE_*", "SHARED_PG_URL"]},
            "ops": {"hosts": ["*"]},
        }}))
        .expect("policy");
        let pg = |ns: &str, var: &str| {
            let j = job(
                ns,
                vec![("s", "store", "batch", json!({"sinks": [{"type": "postgres", "url_env": var, "table": "t"}]}))],
            );
            p.check_job(&j)
        };
        assert!(pg("finance", "FINANCE_PG_URL").is_ok());
        assert!(pg("finance", "SHARED_PG_URL").is_ok());
        let e = pg("finance", "OPS_PG_URL").expect_err("another team's variable");
        assert_eq!(e.field, "sinks[0].url_env");
        assert!(e.message.contains("environment variable OPS_PG_URL is not among the variables allowed for namespace \"finance\" (FINANCE_*, SHARED_PG_URL)"), "{e}");
        assert!(e.message.contains("sandbox.namespaces.\"finance\".env"), "{e}");
        let e = pg("ops", "OPS_PG_URL").expect_err("no env in the rule: none");
        assert!(e.message.contains("(none)"), "{e}");
        // A prefix reference reads every variable it begins: allowed only under a prefix pattern.
        let s3 = |prefix: &str| {
            let j = job(
                "finance",
                vec![("p", "probe", "file", json!({"location": {"uri": "s3://lake", "credentials": {"env": prefix}}}))],
            );
            p.check_job(&j)
        };
        assert!(s3("FINANCE_S3").is_ok(), "reads FINANCE_S3_<KEY>, under FINANCE_*");
        assert!(s3("FINANCE").is_ok(), "reads FINANCE_<KEY>, under FINANCE_*");
        assert!(s3("FIN").is_err(), "FIN_<KEY> is not under FINANCE_*");
        let e = s3("SHARED_PG_URL").expect_err("an exact pattern does not cover a prefix");
        assert!(e.message.contains("environment variables SHARED_PG_URL_*"), "{e}");
        assert_eq!(e.field, "location.credentials.env");
        assert!(Policy::from_value(json!({"namespaces": {"x": {"env": ["A-B*"]}}}))
            .unwrap_err()
            .contains("sandbox.namespaces.\"x\".env[0] \"A-B*\": is not a variable name"));
    }

    #[test]
    fn buckets_hosts_and_wildcards_match_their_patterns() {
        let p = Policy::with_default(
            vec![],
            vec![
                "s3://lake".into(),
                "https://*.example.com".into(),
                "api.partner.net".into(),
                "sftp://files.partner.net".into(),
            ],
            vec!["*".into()],
        )
        .expect("policy");
        let ok = |u: &str| p.check("default", &endpoint(u)).is_ok();
        assert!(ok("s3://lake"));
        assert!(!ok("s3://lake2"));
        assert!(!ok("gcs://lake"), "the scheme must match");
        assert!(ok("https://api.example.com/v2"));
        assert!(ok("https://a.b.EXAMPLE.com"));
        assert!(!ok("https://example.com"), "not the domain itself");
        assert!(!ok("https://evilexample.com"));
        assert!(!ok("https://example.com.evil.net"));
        assert!(!ok("http://api.example.com"), "the scheme must match");
        assert!(ok("http://api.partner.net"), "no scheme: any scheme");
        assert!(ok("sftp://bob@files.partner.net:2222/upload"));
        assert!(!ok("https://evil.net\\@api.example.com/"), "a backslash ends the authority");
        assert!(!ok("https://evil.net%2F.example.com/"), "escapes are refused");
        let any = Policy::with_default(vec![], vec!["*".into()], vec!["*".into()]).expect("policy");
        assert!(any.check("default", &endpoint("kafka://anything:1")).is_ok());
        let kafka = Policy::with_default(vec![], vec!["kafka://*".into()], vec!["*".into()]).expect("policy");
        assert!(kafka.check("default", &endpoint("kafka://b1:9092")).is_ok());
        assert!(kafka.check("default", &endpoint("https://b1")).is_err());
    }

    #[test]
    fn a_port_in_a_pattern_must_match() {
        let p = Policy::with_default(
            vec![],
            vec!["kafka://broker:9092".into(), "https://api.x.test:8443".into(), "http://[::1]:8080".into()],
            vec!["*".into()],
        )
        .expect("policy");
        let ok = |u: &str| p.check("default", &endpoint(u)).is_ok();
        assert!(ok("kafka://broker:9092"));
        assert!(ok("kafka://broker"), "kafka's default port is 9092");
        assert!(!ok("kafka://broker:9093"));
        assert!(ok("https://api.x.test:8443/v1"));
        assert!(!ok("https://api.x.test/v1"), "443 is not 8443");
        assert!(ok("http://[::1]:8080/x"));
        assert!(!ok("http://[::1]:8081/x"));
        assert!(!ok("http://[::1/x"), "an unclosed bracket is refused, not a crash");
        assert_eq!(
            Touch::url("f", "http://[::1]:8080/x"),
            Touch::Endpoint { field: "f".into(), scheme: "http".into(), host: "::1".into(), port: Some(8080) }
        );
    }

    #[test]
    fn a_namespaces_own_rule_overrides_the_default_one() {
        let p = Policy::from_value(json!({"namespaces": {
            "*": {"paths": ["/srv/shared"], "hosts": ["s3://shared"]},
            "finance": {"paths": ["/srv/finance"]}
        }}))
        .expect("policy");
        let path = |ns: &str, x: &str| p.check(ns, &reach(vec![Touch::path("x", x)]));
        assert!(path("finance", "/srv/finance/a").is_ok());
        let e = path("finance", "/srv/shared/a").expect_err("not finance's");
        assert!(e.message.contains("sandbox.namespaces.\"finance\".paths"), "{e}");
        assert!(path("default", "/srv/shared/a").is_ok());
        assert!(path("default", "/srv/finance/a").is_err());
        assert!(p.check("finance", &endpoint("s3://shared")).is_err(), "finance lists no hosts");
        assert_eq!(p.rule("ops").map(|(k, _)| k), Some("*"));
    }

    #[test]
    fn a_namespace_without_a_rule_or_a_default_reaches_nothing() {
        let p = Policy::from_value(json!({"namespaces": {"finance": {"paths": ["/srv/finance"]}}})).expect("policy");
        let e = p.check("default", &reach(vec![Touch::path("x", "/srv/finance/a")])).expect_err("no rule");
        assert!(e.message.contains("no sandbox rule") && e.message.contains("sandbox.namespaces.\"default\""), "{e}");
        assert!(p.check("default", &Reach::default()).is_ok(), "touching nothing needs no rule");
        let noop = job("", vec![("n", "noop", "api", json!({}))]);
        assert!(p.check_job(&noop).is_ok());
    }

    #[test]
    fn bad_policies_name_the_namespace_and_entry() {
        let bad = |v: Value| Policy::from_value(v).expect_err("refused");
        let e = bad(json!({"namespaces": {"finance": {"paths": ["srv/finance"]}}}));
        assert!(e.contains("\"finance\".paths[0]") && e.contains("absolute"), "{e}");
        assert!(bad(json!({"namespaces": {"*": {"paths": ["/srv/../etc"]}}})).contains("\"*\".paths[0]"));
        let e = bad(json!({"namespaces": {"*": {"hosts": ["s3://ok", "https://*."]}}}));
        assert!(e.contains("\"*\".hosts[1]"), "{e}");
        assert!(bad(json!({"namespaces": {"*": {"hosts": ["https://x/path"]}}})).contains("not a path"));
        assert!(bad(json!({"namespaces": {"*": {"hosts": ["kafka://b:99999"]}}})).contains("port"));
        assert!(bad(json!({"namespaces": {"*": {"hosts": ["*.*.x"]}}})).contains("hosts[0]"));
        assert!(bad(json!({"namespaces": {"bad name": {}}})).contains("namespace"));
        assert!(bad(json!({"namespaces": {"*": {"roots": []}}})).contains("roots"));
        assert!(Policy::from_value(json!({"namespaces": {}})).is_ok());
    }

    #[test]
    fn api_urls_and_token_urls_are_found() {
        let c = json!({
            "api": "shop", "base_url": "https://api.shop.test/v2", "path": "/orders",
            "auth": {"type": "oauth2_refresh_token", "token_url": "https://auth.shop.test/token", "credentials": {"file": "/run/secrets/shop"}},
            "fallbacks": [{"base_url": "https://eu.shop.test:8443"}],
            "security": {"ca": {"file": "/etc/weir/ca.pem"}}
        });
        let r = step_reach("collect", Queue::Api, Some(&c)).expect("reach");
        let e = |field: &str, host: &str, port: Option<u16>| Touch::Endpoint {
            field: field.into(),
            scheme: "https".into(),
            host: host.into(),
            port,
        };
        assert!(r.0.contains(&e("base_url", "api.shop.test", None)), "{r:?}");
        assert!(r.0.contains(&e("auth.token_url", "auth.shop.test", None)), "{r:?}");
        assert!(r.0.contains(&e("fallbacks[0].base_url", "eu.shop.test", Some(8443))), "{r:?}");
        assert!(r.0.contains(&Touch::path("auth.credentials.file", "/run/secrets/shop")), "{r:?}");
        assert!(r.0.contains(&Touch::path("security.ca.file", "/etc/weir/ca.pem")), "{r:?}");
        // A path that moves the request to another host is that host.
        let sneaky = json!({"api": "shop", "base_url": "https://api.shop.test", "path": "@evil.test/x"});
        let r = step_reach("probe", Queue::Api, Some(&sneaky)).expect("reach");
        assert_eq!(r.0, vec![e("base_url + path", "evil.test", None)]);
        assert!(data_root().check("default", &r).is_err());
    }

    #[test]
    fn kafka_sink_and_stream_source_brokers_are_found() {
        let c = json!({"source": {"type": "kafka", "brokers": "10.0.0.1:9092, SSL://b2.kafka.test:9093", "topics": ["orders"]},
                       "sinks": [{"type": "kafka", "brokers": "out.kafka.test:9092", "topic": "orders.clean"}]});
        let r = step_reach("consume", Queue::Stream, Some(&c)).expect("reach");
        let k = |field: &str, host: &str, port: u16| Touch::Endpoint {
            field: field.into(),
            scheme: "kafka".into(),
            host: host.into(),
            port: Some(port),
        };
        assert_eq!(
            r.0,
            vec![
                k("source.brokers", "10.0.0.1", 9092),
                k("source.brokers", "b2.kafka.test", 9093),
                k("sinks[0].brokers", "out.kafka.test", 9092)
            ]
        );
        let p = Policy::with_default(vec![], vec!["kafka://*.kafka.test".into()], vec!["*".into()]).expect("policy");
        let e = p.check("default", &r).expect_err("10.0.0.1");
        assert_eq!(e.field, "source.brokers");
        let avro = json!({"source": {"type": "nats", "servers": "nats://n1.test:4222,tls://n2.test", "stream": "s", "consumer": "c"},
                          "format": {"type": "avro", "schema_file": "/etc/weir/orders.avsc"},
                          "dead_letter": {"type": "parquet", "path": "/srv/weir/data/dead"},
                          "sinks": [{"type": "parquet", "path": "/srv/weir/data/orders"}]});
        let r = step_reach("consume", Queue::Stream, Some(&avro)).expect("reach");
        assert!(r.0.contains(&Touch::path("format.schema_file", "/etc/weir/orders.avsc")), "{r:?}");
        assert!(r.0.contains(&Touch::path("dead_letter.path", "/srv/weir/data/dead")), "{r:?}");
        let nats = Touch::Endpoint {
            field: "source.servers".into(),
            scheme: "nats".into(),
            host: "n2.test".into(),
            port: None,
        };
        assert!(r.0.contains(&nats), "{r:?}");
    }

    #[test]
    fn an_sftp_locations_host_and_key_file_are_found() {
        let c = json!({"location": {"uri": "sftp://bob@files.partner.net:2222/upload", "key_file": "/etc/weir/keys/partner"},
                       "patterns": ["*.csv"]});
        let r = step_reach("discover", Queue::File, Some(&c)).expect("reach");
        assert_eq!(
            r.0,
            vec![
                Touch::Endpoint {
                    field: "location.uri".into(),
                    scheme: "sftp".into(),
                    host: "files.partner.net".into(),
                    port: Some(2222)
                },
                Touch::path("location.key_file", "/etc/weir/keys/partner"),
            ]
        );
        let p =
            Policy::with_default(vec!["/srv/weir".into()], vec!["sftp://files.partner.net".into()], vec!["*".into()])
                .expect("p");
        assert_eq!(p.check("default", &r).expect_err("key outside").field, "location.key_file");
        let minio = json!({"location": {"uri": "s3://lake/in", "endpoint": "http://minio.local:9000"}});
        let r = step_reach("probe", Queue::File, Some(&minio)).expect("reach");
        assert_eq!(r.0[1], Touch::url("location.endpoint", "http://minio.local:9000"));
    }

    #[test]
    fn compensation_steps_are_checked_too() {
        let mut spec = job("", vec![("n", "noop", "file", json!({}))]);
        spec.steps[0].compensation = Some(CompensationSpec {
            kind: "archive".into(),
            config: Some(json!({"location": {"uri": "file:///etc"}})),
            ..Default::default()
        });
        let e = data_root().check_job(&spec).expect_err("refused");
        assert_eq!((e.step.as_deref(), e.field.as_str()), (Some("n"), "compensation location.uri"));
    }
}
