//! `weir-master`: the ingestion master as its own process.

use clap::Parser;
use weir_master::MasterConfig;
use weir_runtime::telemetry::TelemetryArgs;

/// The Weir ingestion master.
#[derive(Debug, Parser)]
#[command(name = "weir-master", version, about)]
struct Cli {
    #[command(flatten)]
    master: MasterConfig,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = weir_runtime::telemetry::init("weir-master", &cli.telemetry)?;
    let cancel = weir_runtime::shutdown::on_signal();
    let listener = weir_runtime::grpc::bind(&cli.master.listen).await?;
    let served = weir_master::serve(cli.master, listener, cancel).await;
    telemetry.shutdown().await;
    served?;
    Ok(())
}
