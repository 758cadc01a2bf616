//! `weir-stream-manager`: the stream manager as its own process.

fn main() -> anyhow::Result<()> {
    weir_worker::manager::main(weir_stream_manager::spec)
}
