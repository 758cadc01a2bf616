//! Telemetry on, for the engine benchmark: every process serves `/metrics`, scraped each
//! second as Prometheus would, and exports its spans over OTLP/gRPC (every trace, or a
//! sampled share) to a real receiver on loopback (oteltest's GrpcSink,
//! `tests/python/otlp_sink.py`), whose CPU time is reported too.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub(crate) struct Observe {
    endpoint: String,
    /// Traces kept: `None` every one, else this share (parent-based).
    ratio: Option<f64>,
    spans: std::path::PathBuf,
    targets: Arc<Mutex<Vec<String>>>,
    scrapes: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    sink: Child,
    _dir: tempfile::TempDir,
}

impl Observe {
    /// Starts the receiver (with `python`, the bench venv's) and the scraper; traces are
    /// sampled at `ratio` (`None`: all).
    pub(crate) async fn start(python: &Path, ratio: Option<f64>) -> anyhow::Result<Observe> {
        let dir = tempfile::tempdir()?;
        let spans = dir.path().join("spans.jsonl");
        let port = crate::free_port()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/otlp_sink.py");
        let sink = Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(&spans)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("{} (make bench installs oteltest)", python.display()))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "the OTLP receiver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = CancellationToken::new();
        tokio::spawn(scrape(targets.clone(), scrapes.clone(), stop.clone()));
        Ok(Observe {
            endpoint: format!("http://127.0.0.1:{port}"),
            ratio,
            spans,
            targets,
            scrapes,
            stop,
            sink,
            _dir: dir,
        })
    }

    /// The environment of one more process: trace export with the run's sampling, and
    /// `/metrics` on a port of its own that the scraper then reads.
    pub(crate) fn env(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let metrics = format!("127.0.0.1:{}", crate::free_port()?);
        self.targets.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(metrics.clone());
        let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()), ("WEIR_METRICS_LISTEN", metrics)];
        match self.ratio {
            None => env.push(("OTEL_TRACES_SAMPLER", "always_on".into())),
            Some(r) => {
                env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
                env.push(("OTEL_TRACES_SAMPLER_ARG", r.to_string()));
            }
        }
        Ok(env)
    }

    /// Spans the receiver got so far, scrapes made, and the receiver's CPU seconds.
    pub(crate) fn counts(&self) -> (usize, u64, f64) {
        let spans = std::fs::read_to_string(&self.spans).map(|t| t.lines().count()).unwrap_or(0);
        let cpu = self.sink.id().map(crate::cpu_seconds).unwrap_or_default();
        (spans, self.scrapes.load(std::sync::atomic::Ordering::Relaxed), cpu)
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads every target's `/metrics` once a second.
async fn scrape(targets: Arc<Mutex<Vec<String>>>, scrapes: Arc<std::sync::atomic::AtomicU64>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let list = targets.lock().map(|t| t.clone()).unwrap_or_default();
        for t in list {
            if let Ok(r) = http.get(format!("http://{t}/metrics")).timeout(Duration::from_secs(2)).send().await {
                if r.bytes().await.is_ok() {
                    scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}
