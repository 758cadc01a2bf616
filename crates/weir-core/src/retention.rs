//! How long finished work is kept: a default retention (30 days) and per-namespace
//! overrides, turned into the sweeps the master's purge runs.
//!
//! A finished job (with its tasks and history) is deleted once it finished longer ago than
//! its namespace's retention, and only when none of its tasks is still leased and its
//! events were published by every relay. Until then its run id keeps idempotent
//! submission's promise; after, the same run id starts a new job.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Millis;

/// How long a finished job is kept unless its namespace says otherwise.
pub const DEFAULT_RETENTION: &str = "30d";
/// Most jobs (or outbox messages) one purge statement deletes, so no transaction grows
/// with the backlog and the engine's commits never wait long behind one.
pub const DEFAULT_PURGE_BATCH: u32 = 1000;

/// Which namespaces one sweep covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Exactly this namespace (it has an override).
    Namespace(String),
    /// Every namespace but these (the ones with overrides): the default's sweep.
    AllBut(Vec<String>),
}

impl Scope {
    /// Whether `namespace` is covered.
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::Namespace(n) => n == namespace,
            Scope::AllBut(except) => !except.iter().any(|e| e == namespace),
        }
    }
}

/// One purge pass: the finished jobs of `scope` that finished before `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub scope: Scope,
    pub before: Millis,
}

/// The retention settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    default: Duration,
    namespaces: BTreeMap<String, Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { default: Duration::from_secs(30 * 24 * 3600), namespaces: BTreeMap::new() }
    }
}

impl Retention {
    /// From the default ("30d", "12h") and "namespace=duration" overrides; the error names
    /// the bad entry.
    pub fn parse(default: &str, overrides: &[String]) -> Result<Retention, String> {
        let default = positive(default, "retention")?;
        let mut namespaces = BTreeMap::new();
        for o in overrides.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            let (ns, d) =
                o.split_once('=').ok_or_else(|| format!("retention override {o:?} must look like namespace=90d"))?;
            let ns = ns.trim();
            if ns.is_empty() {
                return Err(format!("retention override {o:?} names no namespace"));
            }
            let d = positive(d, &format!("retention of namespace {ns:?}"))?;
            if namespaces.insert(ns.to_string(), d).is_some() {
                return Err(format!("namespace {ns:?} has two retention overrides"));
            }
        }
        Ok(Retention { default, namespaces })
    }

    /// How long a finished job of `namespace` is kept.
    pub fn of(&self, namespace: &str) -> Duration {
        self.namespaces.get(namespace).copied().unwrap_or(self.default)
    }

    /// The sweeps that together cover every namespace once, as of `now`.
    pub fn sweeps(&self, now: Millis) -> Vec<Sweep> {
        let mut out: Vec<Sweep> = self
            .namespaces
            .iter()
            .map(|(ns, d)| Sweep { scope: Scope::Namespace(ns.clone()), before: cutoff(now, *d) })
            .collect();
        out.push(Sweep {
            scope: Scope::AllBut(self.namespaces.keys().cloned().collect()),
            before: self.default_cutoff(now),
        });
        out
    }

    /// What finished before this, as of `now`, is past the default retention.
    pub fn default_cutoff(&self, now: Millis) -> Millis {
        cutoff(now, self.default)
    }
}

fn cutoff(now: Millis, keep: Duration) -> Millis {
    now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

fn positive(text: &str, what: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(text).map_err(|e| format!("{what}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{what} must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    #[test]
    fn default_is_thirty_days_and_overrides_win() {
        let r = Retention::parse(DEFAULT_RETENTION, &["finance=90d".into(), " scratch = 1h ".into()]).expect("valid");
        assert_eq!(r.of("team"), Duration::from_secs(30 * 24 * 3600));
        assert_eq!(r.of("finance"), Duration::from_secs(90 * 24 * 3600));
        assert_eq!(r.of("scratch"), Duration::from_secs(3600));
        assert_eq!(r, Retention::parse("30d", &["scratch=1h".into(), "finance=90d".into()]).expect("valid"));
    }

    #[test]
    fn sweeps_cover_each_namespace_once() {
        let r = Retention::parse("30d", &["finance=90d".into(), "scratch=1d".into()]).expect("valid");
        let now = 100 * DAY;
        let sweeps = r.sweeps(now);
        assert_eq!(
            sweeps,
            vec![
                Sweep { scope: Scope::Namespace("finance".into()), before: 10 * DAY },
                Sweep { scope: Scope::Namespace("scratch".into()), before: 99 * DAY },
                Sweep { scope: Scope::AllBut(vec!["finance".into(), "scratch".into()]), before: 70 * DAY },
            ]
        );
        for ns in ["finance", "scratch", "team", ""] {
            assert_eq!(sweeps.iter().filter(|s| s.scope.covers(ns)).count(), 1, "{ns:?} is swept once");
        }
        assert_eq!(Retention::default().sweeps(now), vec![Sweep { scope: Scope::AllBut(vec![]), before: 70 * DAY }]);
        assert_eq!(r.default_cutoff(now), 70 * DAY);
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(Retention::parse("soon", &[]).unwrap_err().contains("retention"));
        assert!(Retention::parse("0s", &[]).unwrap_err().contains("longer than zero"));
        assert!(Retention::parse("30d", &["finance".into()]).unwrap_err().contains("namespace=90d"));
        assert!(Retention::parse("30d", &["=1d".into()]).unwrap_err().contains("names no namespace"));
        assert!(Retention::parse("30d", &["a=1d".into(), "a=2d".into()]).unwrap_err().contains("two retention"));
        assert!(Retention::parse("30d", &["a=later".into()]).unwrap_err().contains("namespace \"a\""));
        assert!(Retention::parse("30d", &["".into()]).is_ok(), "an empty list entry is no override");
    }
}
