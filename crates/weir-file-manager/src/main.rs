//! `weir-file-manager`: the file manager as its own process.

fn main() -> anyhow::Result<()> {
    weir_worker::manager::main(weir_file_manager::spec)
}
