//! Removes staged downloads older than the retention (default 24 h), hourly. Staging is
//! `$WEIR_DATA_DIR/staging/<job>/<step>/…`; a job's folder goes once nothing in it was
//! touched within the retention; on a staging object store (`WEIR_STAGING_LOCATION`),
//! a job's objects go once none of them is younger than the retention. The quarantine is never cleaned: it waits
//! for a person.

use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use weir_worker::manager::{Background, BackgroundContext};

use crate::FileSettings;

/// How often the staging area is swept.
const SWEEP: Duration = Duration::from_secs(3600);

pub struct Cleanup {
    settings: FileSettings,
}

impl Cleanup {
    pub fn new(settings: FileSettings) -> Self {
        Cleanup { settings }
    }
}

#[async_trait]
impl Background for Cleanup {
    async fn run(&self, ctx: BackgroundContext) {
        let staging = self.settings.data_dir.join(weir_worker::STAGING);
        let shared = self.settings.staging();
        let retention = self.settings.retention;
        loop {
            let dir = staging.clone();
            match tokio::task::spawn_blocking(move || sweep(&dir, retention, SystemTime::now())).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "staging cleaned"),
                Ok(Err(e)) => tracing::warn!(error = %e, "staging cleanup failed"),
                _ => {}
            }
            match shared.sweep(crate::now_ms(), retention.as_millis() as i64).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "staging store cleaned"),
                Err(e) => tracing::warn!(error = %e, "staging store cleanup failed"),
                _ => {}
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tokio::time::sleep(SWEEP) => {}
            }
        }
    }
}

/// The newest modification time of anything under `p`.
fn newest(p: &Path) -> std::io::Result<SystemTime> {
    let meta = std::fs::symlink_metadata(p)?;
    let mut t = meta.modified()?;
    if meta.is_dir() {
        for e in std::fs::read_dir(p)? {
            t = t.max(newest(&e?.path())?);
        }
    }
    Ok(t)
}

/// Removes each job folder under `staging` untouched for longer than `retention`;
/// returns how many went.
pub fn sweep(staging: &Path, retention: Duration, now: SystemTime) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(staging) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in entries {
        let p = e?.path();
        let age = now.duration_since(newest(&p)?).unwrap_or_default();
        if age > retention {
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_folders_older_than_the_retention_go() {
        let dir = tempfile::tempdir().expect("tmp");
        let job = dir.path().join("job-1/fetch");
        std::fs::create_dir_all(&job).expect("mkdir");
        std::fs::write(job.join("a.csv"), b"x").expect("write");
        let now = SystemTime::now();
        assert_eq!(sweep(dir.path(), Duration::from_secs(3600), now).expect("sweep"), 0);
        assert!(job.join("a.csv").exists());
        let later = now + Duration::from_secs(2 * 3600);
        assert_eq!(sweep(dir.path(), Duration::from_secs(3600), later).expect("sweep"), 1);
        assert!(!dir.path().join("job-1").exists());
        assert_eq!(sweep(&dir.path().join("absent"), Duration::from_secs(1), later).expect("absent"), 0);
    }
}
