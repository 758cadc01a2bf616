//! `weir dev`: the whole platform in one process — the master with the embedded store on
//! local disk and the four managers — listening on loopback. Stop it with Ctrl-C; start it
//! again and every job is still there.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use weir_bus::{Bus, MemoryBus};
use weir_master::config::EventsConfig;
use weir_master::MasterConfig;
use weir_worker::manager::{self, ManagerArgs, ManagerSpec};

/// Settings of `weir dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the master listens.
    #[arg(long, env = "WEIR_MASTER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Where state lives (the embedded store by default).
    #[arg(long, env = "WEIR_STORE_URL", default_value = "sqlite://.weir/weir.db")]
    store_url: String,
    /// Tasks each manager runs at once (default: each manager's own, 16; streams: 100).
    #[arg(long, env = "WEIR_WORKER_CONCURRENCY")]
    concurrency: Option<u32>,
    /// Where the file manager's own service listens (`weir files …`).
    #[arg(long, env = "WEIR_FILES_LISTEN", default_value = "127.0.0.1:50052")]
    files_listen: String,
    /// Where the batch manager's own service listens (`weir datasets …`).
    #[arg(long, env = "WEIR_DATASETS_LISTEN", default_value = "127.0.0.1:50053")]
    datasets_listen: String,
    /// Where the stream manager's own service listens (`weir streams`).
    #[arg(long, env = "WEIR_STREAMS_LISTEN", default_value = "127.0.0.1:50054")]
    streams_listen: String,
    /// Where `/metrics` is served, for the master and the four managers at once (one
    /// process, one registry); empty: none.
    #[arg(long = "metrics-listen", env = "WEIR_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// Events go to the in-process bus unless Kafka brokers are given here.
    #[command(flatten)]
    events: EventsConfig,
    /// Off by default (plaintext on loopback, every caller allowed). With `--auth` and an
    /// HS256 secret, every call needs a token (`weir token` signs one); the managers get
    /// theirs from the same secret.
    #[command(flatten)]
    auth: weir_runtime::security::AuthArgs,
    #[command(flatten)]
    telemetry: weir_runtime::telemetry::TelemetryArgs,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let telemetry = weir_runtime::telemetry::init("weir-dev", &args.telemetry)?;
    let cancel = weir_runtime::shutdown::on_signal();
    let listener = weir_runtime::grpc::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let master_url = format!("http://{addr}");
    let mut config = MasterConfig::new(&args.listen, &args.store_url);
    config.events = args.events.clone();
    config.auth = args.auth.clone();
    config.metrics.metrics_listen = args.metrics_listen.clone();
    let managers_token = managers_token(&args.auth)?;
    let bus_name = match &args.events.kafka_brokers {
        Some(b) => format!("Kafka at {b}"),
        None => "in-process".to_string(),
    };
    // One store for the master, the file manager's inventory and the dataset catalogue:
    // the embedded SQLite file has one owner process.
    let store = weir_store::open(&args.store_url).await?;
    let bus: Option<Arc<dyn Bus>> = match config.events.kafka(&config.id).map_err(anyhow::Error::msg)? {
        Some(k) => Some(Arc::new(weir_bus::KafkaBus::new(k)?)),
        None => Some(Arc::new(MemoryBus::default())),
    };
    let master = tokio::spawn(weir_master::serve_with_store(config, listener, bus, store.clone(), cancel.clone()));
    let mut files = weir_file_manager::FileSettings::from_env().map_err(|e| anyhow::anyhow!("bad setting: {e}"))?;
    files.store = weir_file_manager::Inventory::shared(store.clone());
    let mut batch = weir_batch_manager::BatchSettings::from_env().map_err(|e| anyhow::anyhow!("bad setting: {e}"))?;
    batch.catalogue = weir_worker::store::LazyStore::shared(store);
    let specs: [(ManagerSpec, &str); 4] = [
        (weir_api_manager::spec().map_err(anyhow::Error::msg)?, ""),
        (weir_file_manager::spec_with(files), &args.files_listen),
        (weir_batch_manager::spec_with(batch), &args.datasets_listen),
        (weir_stream_manager::spec().map_err(anyhow::Error::msg)?, &args.streams_listen),
    ];
    let mut managers = Vec::new();
    for (spec, listen) in specs {
        let args = ManagerArgs {
            listen: listen.to_string(),
            concurrency: args.concurrency,
            drain_timeout: Duration::from_secs(5),
            worker_id: Some(format!("{}-dev", spec.name)),
            token: weir_runtime::security::TokenArgs { token: managers_token.clone(), token_file: None },
            auth: args.auth.clone(),
            ..ManagerArgs::local(&master_url)
        };
        managers.push(tokio::spawn(manager::run(spec, args, cancel.clone())));
    }
    println!("Weir is running (embedded).");
    println!("  master:  {master_url}   (grpcurl -plaintext {addr} list)");
    println!("  store:   {}", args.store_url);
    if !args.metrics_listen.is_empty() {
        println!("  metrics: http://{}/metrics", args.metrics_listen);
    }
    println!("  events:  {bus_name}");
    if args.auth.enabled {
        println!("  auth:    on (a token: export WEIR_TOKEN=$(weir token --subject you --permissions '*:admin'))");
    }
    println!("  files:   http://{}   (weir files list)", args.files_listen);
    println!("  datasets: http://{}   (weir datasets list)", args.datasets_listen);
    println!("  streams: http://{}   (weir streams)", args.streams_listen);
    println!("  try:     weir submit tests/fixtures/jobs/hello.yaml --watch");
    println!("Ctrl-C stops it; jobs survive restarts.");
    let mut result = Ok(());
    for m in managers {
        result = result.and(m.await?.map_err(anyhow::Error::from));
    }
    result = result.and(master.await?.map_err(anyhow::Error::from));
    telemetry.shutdown().await;
    result
}

/// With authentication on, the in-process managers' token: the worker role and write on
/// every namespace (the file manager's watches submit jobs), signed with the HS256 secret.
fn managers_token(auth: &weir_runtime::security::AuthArgs) -> anyhow::Result<Option<String>> {
    if !auth.enabled {
        return Ok(None);
    }
    let Some(secret) = auth.hs256_secret.clone().or_else(|| {
        auth.hs256_secret_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).map(|s| s.trim_end().to_string())
    }) else {
        anyhow::bail!("weir dev --auth signs its managers' token with the HS256 secret: set WEIR_AUTH_HS256_SECRET");
    };
    let grants = weir_auth::Grants::parse(["*:worker", "*:write"]).map_err(anyhow::Error::msg)?;
    let ttl = Duration::from_secs(365 * 24 * 3600);
    let token = weir_auth::token::mint(
        secret.as_bytes(),
        "weir-dev-managers",
        &grants,
        ttl,
        auth.issuer.as_deref(),
        auth.audience.as_deref(),
    )?;
    Ok(Some(token))
}
