//! `weir-api-manager`: the api manager as its own process.

fn main() -> anyhow::Result<()> {
    weir_worker::manager::main(weir_api_manager::spec)
}
