//! `weir-batch-manager`: the batch manager as its own process.

fn main() -> anyhow::Result<()> {
    weir_worker::manager::main(weir_batch_manager::spec)
}
