//! A blocking client of `larder.v1.Control` for `larder ctl` and scripts, so the
//! binary needs neither tokio nor tonic: each call runs on a private
//! current-thread runtime. Answers are the protobuf messages themselves (this is
//! the wire edge); [`to_json`] renders any of them in the canonical protobuf JSON
//! mapping, as grpcurl prints it.

use std::future::Future;
use std::time::Duration;

/// Re-exported so callers of [`to_json`] need no prost dependency of their own.
pub use prost::Message;

use larder_proto::v1 as pb;
use larder_proto::v1::control_client::ControlClient;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::agent::authorization_header;

/// Longest wait for the TCP connection to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for one unary call (but ProfileNode, which waits for the profile: its seconds plus
/// [`crate::profile::PROFILE_ANSWER_GRACE`] plus this).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("{} {}: {}", .code.grpc_name(), .code.number(), .message)]
    Rpc { code: GrpcCode, message: String },
    #[error("invalid token: {0}")]
    Token(String),
    #[error("cannot render {message_name} as JSON: {reason}")]
    Json {
        message_name: String,
        reason: String,
    },
}

/// A gRPC status code, named as the gRPC spec names it (e.g. `NOT_FOUND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcCode(pub Code);

impl GrpcCode {
    pub fn number(self) -> i32 {
        self.0 as i32
    }

    pub fn grpc_name(self) -> &'static str {
        match self.0 {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl From<Status> for CtlError {
    fn from(status: Status) -> CtlError {
        CtlError::Rpc {
            code: GrpcCode(status.code()),
            message: status.message().to_string(),
        }
    }
}

/// A connection to one control plane.
pub struct CtlClient {
    runtime: tokio::runtime::Runtime,
    client: ControlClient<Channel>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for CtlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtlClient").finish_non_exhaustive()
    }
}

impl CtlClient {
    /// Connects to `address` ("host:port"); `token` is sent as a bearer token.
    pub fn connect(address: &str, token: Option<&str>) -> Result<CtlClient, CtlError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CtlError::Runtime)?;
        let connect_error = |reason: String| CtlError::Connect {
            address: address.to_string(),
            reason,
        };
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| connect_error(error.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = runtime
            .block_on(endpoint.connect())
            .map_err(|error| connect_error(format!("{error}: is `larder control` running?")))?;
        let authorization = authorization_header(token).map_err(CtlError::Token)?;
        Ok(CtlClient {
            runtime,
            client: ControlClient::new(channel),
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    pub fn list_nodes(&mut self) -> Result<pb::ListNodesResponse, CtlError> {
        let request = self.request(pb::ListNodesRequest {});
        unary(&self.runtime, self.client.list_nodes(request))
    }

    pub fn get_node(&mut self, node_id: &str) -> Result<pb::GetNodeResponse, CtlError> {
        let request = self.request(pb::GetNodeRequest {
            node_id: node_id.to_string(),
        });
        unary(&self.runtime, self.client.get_node(request))
    }

    pub fn get_cluster_load(&mut self) -> Result<pb::ClusterLoad, CtlError> {
        let request = self.request(pb::GetClusterLoadRequest {});
        unary(&self.runtime, self.client.get_cluster_load(request))
    }

    /// Calls `each` for every message of the stream (`count` 0 = until interrupted).
    pub fn watch_cluster_load(
        &mut self,
        interval_ms: u64,
        count: u64,
        mut each: impl FnMut(pb::ClusterLoad),
    ) -> Result<(), CtlError> {
        let request = self.request(pb::WatchClusterLoadRequest { interval_ms, count });
        let client = &mut self.client;
        self.runtime.block_on(async {
            let mut stream = client.watch_cluster_load(request).await?.into_inner();
            while let Some(load) = stream.message().await? {
                each(load);
            }
            Ok(())
        })
    }

    pub fn get_policy(&mut self) -> Result<pb::GetPolicyResponse, CtlError> {
        let request = self.request(pb::GetPolicyRequest {});
        unary(&self.runtime, self.client.get_policy(request))
    }

    pub fn set_policy(
        &mut self,
        message: pb::SetPolicyRequest,
    ) -> Result<pb::SetPolicyResponse, CtlError> {
        let request = self.request(message);
        unary(&self.runtime, self.client.set_policy(request))
    }

    pub fn list_targets(&mut self, limit: u32) -> Result<pb::ListTargetsResponse, CtlError> {
        let request = self.request(pb::ListTargetsRequest { limit });
        unary(&self.runtime, self.client.list_targets(request))
    }

    pub fn drain(&mut self, node_id: &str) -> Result<pb::DrainResponse, CtlError> {
        let request = self.request(pb::DrainRequest {
            node_id: node_id.to_string(),
        });
        unary(&self.runtime, self.client.drain(request))
    }

    pub fn undrain(&mut self, node_id: &str) -> Result<pb::DrainResponse, CtlError> {
        let request = self.request(pb::UndrainRequest {
            node_id: node_id.to_string(),
        });
        unary(&self.runtime, self.client.undrain(request))
    }

    pub fn reload_node(&mut self, node_id: &str) -> Result<pb::ReloadNodeResponse, CtlError> {
        let request = self.request(pb::ReloadNodeRequest {
            node_id: node_id.to_string(),
        });
        unary(&self.runtime, self.client.reload_node(request))
    }

    pub fn list_containers(&mut self) -> Result<pb::ListContainersResponse, CtlError> {
        let request = self.request(pb::ListContainersRequest {});
        unary(&self.runtime, self.client.list_containers(request))
    }

    pub fn set_container(
        &mut self,
        message: pb::SetContainerRequest,
    ) -> Result<pb::SetContainerResponse, CtlError> {
        let request = self.request(message);
        unary(&self.runtime, self.client.set_container(request))
    }

    /// ProfileNode; waits up to `seconds` + [`crate::profile::PROFILE_ANSWER_GRACE`] + [`CALL_TIMEOUT`].
    pub fn profile_node(
        &mut self,
        message: pb::ProfileNodeRequest,
    ) -> Result<pb::ProfileNodeResponse, CtlError> {
        let timeout = Duration::from_secs(u64::from(message.seconds))
            + crate::profile::PROFILE_ANSWER_GRACE
            + CALL_TIMEOUT;
        let request = self.request(message);
        unary_within(&self.runtime, timeout, self.client.profile_node(request))
    }
}

/// Runs one unary call on the client's runtime, for at most [`CALL_TIMEOUT`], and unwraps its answer.
fn unary<T>(
    runtime: &tokio::runtime::Runtime,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CtlError> {
    unary_within(runtime, CALL_TIMEOUT, call)
}

/// [`unary`] with its own time limit.
fn unary_within<T>(
    runtime: &tokio::runtime::Runtime,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CtlError> {
    let answer = runtime
        .block_on(async { tokio::time::timeout(timeout, call).await })
        .map_err(|_| {
            Status::deadline_exceeded(format!("no answer within {} s", timeout.as_secs()))
        })?;
    Ok(answer?.into_inner())
}

/// Renders `message` (whose full protobuf name is `message_name`, e.g.
/// `larder.v1.ListNodesResponse`) in the canonical protobuf JSON mapping, with
/// default-valued fields included so columns are stable for scripts.
pub fn to_json(
    message_name: &str,
    message: &impl prost::Message,
) -> Result<serde_json::Value, CtlError> {
    let json_error = |reason: String| CtlError::Json {
        message_name: message_name.to_string(),
        reason,
    };
    let pool = DescriptorPool::decode(larder_proto::FILE_DESCRIPTOR_SET)
        .map_err(|error| json_error(error.to_string()))?;
    let descriptor = pool
        .get_message_by_name(message_name)
        .ok_or_else(|| json_error("no such message in larder.v1".to_string()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|error| json_error(error.to_string()))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|error| json_error(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_protobuf_mapping() {
        let answer = pb::SetPolicyResponse {
            steering_version: 42,
        };
        let json = to_json("larder.v1.SetPolicyResponse", &answer).expect("renders");
        assert_eq!(json, serde_json::json!({"steeringVersion": "42"}));
        let error = to_json("larder.v1.Nope", &answer).unwrap_err();
        assert!(matches!(error, CtlError::Json { .. }), "{error:?}");
    }

    #[test]
    fn rpc_errors_print_the_grpc_code() {
        let error = CtlError::from(Status::not_found("node \"x\" is not registered"));
        assert_eq!(
            error.to_string(),
            "NOT_FOUND 5: node \"x\" is not registered"
        );
    }
}
