//! `larder.v1`: the protobuf API of the Larder control plane and its generated
//! tonic code.
//!
//! This crate owns only the wire format. It holds three files under
//! `proto/larder/v1/`:
//! - `types.proto`: node identity, per-shard load, policy, containers, steering;
//! - `node.proto`: `larder.v1.NodeService` (Register, ReportLoad, WatchSteering),
//!   used by nodes;
//! - `control.proto`: `larder.v1.Control`, used by operators.
//!
//! The generated types stop at `larder-control`'s edge: nothing else in the
//! workspace should hold prost messages in its state.
//!
//! [`FILE_DESCRIPTOR_SET`] is the encoded `FileDescriptorSet` of all three files, for
//! the reflection service (so grpcurl needs no .proto files).

/// Package `larder.v1`: messages, `control_client`/`control_server`,
/// `node_service_client`/`node_service_server`.
pub mod v1 {
    #![allow(missing_docs)]
    #![allow(clippy::all)]
    #![allow(clippy::pedantic)]
    tonic::include_proto!("larder.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of the `larder.v1` files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/larder_v1_descriptor.bin"));

/// Fully qualified name of the operators' service.
pub const CONTROL_SERVICE_NAME: &str = "larder.v1.Control";
/// Fully qualified name of the node-facing service.
pub const NODE_SERVICE_NAME: &str = "larder.v1.NodeService";

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_set_names_both_services() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_string();
                file.service
                    .iter()
                    .map(move |service| format!("{package}.{}", service.name()))
            })
            .collect();
        assert!(
            services.contains(&CONTROL_SERVICE_NAME.to_string()),
            "{services:?}"
        );
        assert!(
            services.contains(&NODE_SERVICE_NAME.to_string()),
            "{services:?}"
        );
    }
}
