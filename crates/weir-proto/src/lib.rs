//! Generated types and gRPC stubs for `package weir.v1` (see `proto/` at the top of the repo).
//!
//! Only generated code and the descriptor set for server reflection live here; conversions
//! to domain types live with the services that need them.

/// `weir.v1`: jobs, tasks and the master's two services.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("weir.v1");
}

/// Encoded `FileDescriptorSet` of every Weir proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weir_descriptor.bin"));

pub mod convert;
