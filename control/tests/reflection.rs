//! grpcurl compatibility: a client that knows no .proto file and uses only the
//! reflection service, as grpcurl does — list services, fetch the file descriptor
//! containing a symbol (and its dependencies by file name), build each request
//! from JSON with prost-reflect, call through a generic tonic codec and decode the
//! answer dynamically. Every `larder.v1.Control` method is called this way, over
//! reflection v1 and v1alpha; health answers SERVING.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use larder_control::NodeAgent;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ServiceDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1 as reflection_v1;
use tonic_reflection::pb::v1alpha as reflection_v1alpha;

use common::*;

/// A tonic codec for messages known only at run time.
#[derive(Clone)]
struct DynamicCodec {
    response: MessageDescriptor,
}

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.response.clone())
    }
}

/// Services listed by reflection v1.
async fn list_services_v1(channel: Channel) -> BTreeSet<String> {
    use reflection_v1::server_reflection_request::MessageRequest;
    let mut client = reflection_v1::server_reflection_client::ServerReflectionClient::new(channel);
    service_names(reflect(&mut client, MessageRequest::ListServices(String::new())).await)
}

/// The service names of a v1 ListServices answer.
fn service_names(
    answer: reflection_v1::server_reflection_response::MessageResponse,
) -> BTreeSet<String> {
    use reflection_v1::server_reflection_response::MessageResponse;
    match answer {
        MessageResponse::ListServicesResponse(list) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("expected a service list, got {other:?}"),
    }
}

/// Services listed by reflection v1alpha (older grpcurl versions use it).
async fn list_services_v1alpha(channel: Channel) -> BTreeSet<String> {
    use reflection_v1alpha::server_reflection_request::MessageRequest;
    let mut client =
        reflection_v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = reflection_v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection call")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    // v1alpha's messages are v1's on the wire (same fields, same numbers): read the answer as v1.
    let answer = reflection_v1::ServerReflectionResponse::decode(answer.encode_to_vec().as_slice())
        .expect("a v1alpha answer decodes as v1");
    service_names(answer.message_response.expect("body"))
}

/// Fetches the file defining `symbol` and, by name, every file it depends on;
/// builds a descriptor pool from them and returns the service.
async fn service_by_reflection(channel: Channel, symbol: &str) -> ServiceDescriptor {
    use reflection_v1::server_reflection_request::MessageRequest;
    use reflection_v1::server_reflection_response::MessageResponse;
    let mut client = reflection_v1::server_reflection_client::ServerReflectionClient::new(channel);
    let mut files: BTreeMap<String, prost_types::FileDescriptorProto> = BTreeMap::new();
    let mut requests = vec![MessageRequest::FileContainingSymbol(symbol.to_string())];
    // Bounded: each round fetches at least one new file or stops.
    for _round in 0..32 {
        let Some(request) = requests.pop() else { break };
        let MessageResponse::FileDescriptorResponse(answer) = reflect(&mut client, request).await
        else {
            panic!("expected file descriptors for {symbol}");
        };
        for bytes in answer.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .expect("file descriptor decodes");
            files.insert(file.name().to_string(), file);
        }
        for file in files.values() {
            for dependency in &file.dependency {
                if !files.contains_key(dependency) {
                    requests.push(MessageRequest::FileByFilename(dependency.clone()));
                }
            }
        }
    }
    assert!(
        requests.is_empty(),
        "dependencies left unfetched: {requests:?}"
    );
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files.into_values())
        .expect("reflected files form a valid pool");
    pool.get_service_by_name(symbol)
        .unwrap_or_else(|| panic!("{symbol} is in its own file"))
}

/// Calls `method` of `service` with a request built from JSON; returns the
/// answers as JSON (one for unary calls, all of them for server streams).
async fn call_json(
    channel: Channel,
    service: &ServiceDescriptor,
    method: &str,
    request_json: &str,
) -> Result<Vec<serde_json::Value>, Status> {
    let method = service
        .methods()
        .find(|candidate| candidate.name() == method)
        .unwrap_or_else(|| panic!("{method} is listed by reflection"));
    let mut deserializer = serde_json::Deserializer::from_str(request_json);
    let request = DynamicMessage::deserialize(method.input(), &mut deserializer)
        .expect("request JSON matches the reflected input type");
    let path = PathAndQuery::from_str(&format!("/{}/{}", service.full_name(), method.name()))
        .expect("method path");
    let codec = DynamicCodec {
        response: method.output(),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let to_json = |message: DynamicMessage| serde_json::to_value(&message).expect("serializes");
    if method.is_server_streaming() {
        let mut stream = grpc
            .server_streaming(tonic::Request::new(request), path, codec)
            .await?
            .into_inner();
        let mut answers = Vec::new();
        while let Some(message) = stream.message().await? {
            answers.push(to_json(message));
        }
        Ok(answers)
    } else {
        let answer = grpc
            .unary(tonic::Request::new(request), path, codec)
            .await?
            .into_inner();
        Ok(vec![to_json(answer)])
    }
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    let plane = start_default();
    let channel = channel(plane.local_addr()).await;
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "larder.v1.Control",
        "larder.v1.NodeService",
    ];
    let v1 = list_services_v1(channel.clone()).await;
    let v1alpha = list_services_v1alpha(channel.clone()).await;
    for service in expected {
        assert!(v1.contains(service), "v1 lists {service}: {v1:?}");
        assert!(
            v1alpha.contains(service),
            "v1alpha lists {service}: {v1alpha:?}"
        );
    }
    // The health service's own descriptors are registered too (grpcurl describe).
    let health = service_by_reflection(channel, "grpc.health.v1.Health").await;
    assert!(health.methods().any(|method| method.name() == "Check"));
    plane.shutdown().expect("clean shutdown");
}

#[tokio::test]
async fn health_answers_serving_for_server_and_control() {
    let plane = start_default();
    let mut health = HealthClient::new(channel(plane.local_addr()).await);
    for service in ["", "larder.v1.Control", "larder.v1.NodeService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            answer.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    plane.shutdown().expect("clean shutdown");
}

#[tokio::test]
async fn every_control_method_works_through_reflection_alone() {
    let plane = start_default();
    let address = plane.local_addr();
    let hooks = RecordingHooks::new(2);
    let agent = NodeAgent::spawn(address, node_info("node-a", 2), hooks.clone()).expect("agent");
    let channel = channel(address).await;
    let control = service_by_reflection(channel.clone(), "larder.v1.Control").await;
    let call = |method: &'static str, json: &'static str| {
        let channel = channel.clone();
        let control = control.clone();
        async move { call_json(channel, &control, method, json).await }
    };
    // Wait until the node's reports have arrived (GetClusterLoad through reflection).
    wait_until_async("node-a reports through reflection", || async {
        let load = call("GetClusterLoad", "{}").await.expect("GetClusterLoad");
        load[0]["nodesUp"] == 1 && load[0]["total"]["shard"] == 2
    })
    .await;

    let mut called = BTreeSet::new();
    let mut ok = |method: &'static str, answers: Result<Vec<serde_json::Value>, Status>| {
        called.insert(method);
        answers.unwrap_or_else(|status| panic!("{method} failed: {status:?}"))
    };
    let nodes = ok("ListNodes", call("ListNodes", "{}").await);
    assert_eq!(nodes[0]["nodes"][0]["info"]["nodeId"], "node-a");
    assert_eq!(nodes[0]["nodes"][0]["state"], "NODE_STATE_UP");

    let node = ok("GetNode", call("GetNode", r#"{"nodeId": "node-a"}"#).await);
    assert_eq!(node[0]["shards"].as_array().map(Vec::len), Some(2));
    assert_eq!(node[0]["shards"][1]["activeConnections"], "11");

    let load = ok("GetClusterLoad", call("GetClusterLoad", "{}").await);
    assert_eq!(load[0]["total"]["activeConnections"], "21");

    let watched = ok(
        "WatchClusterLoad",
        call("WatchClusterLoad", r#"{"intervalMs": "50", "count": "2"}"#).await,
    );
    assert_eq!(watched.len(), 2, "count bounds the stream");
    assert_eq!(watched[1]["nodesUp"], 1);

    let set = ok(
        "SetPolicy",
        call(
            "SetPolicy",
            r#"{"policy": {"kind": "POLICY_KIND_LARD_R", "lard": {"tLow": 10, "tHigh": 40}},
                "nodeWeights": [{"nodeId": "node-a", "weight": 3}]}"#,
        )
        .await,
    );
    let version: u64 = set[0]["steeringVersion"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .expect("steering version");
    let policy = ok("GetPolicy", call("GetPolicy", "{}").await);
    assert_eq!(policy[0]["policy"]["kind"], "POLICY_KIND_LARD_R");
    assert_eq!(policy[0]["policy"]["lard"]["tHigh"], 40);
    assert_eq!(policy[0]["nodeWeights"][0]["weight"], 3);
    wait_until("the node applies the new policy", || {
        hooks.last_applied().is_some_and(|steering| {
            steering.version >= version && steering.policy.lard.t_high == 40
        })
    });

    let targets = ok("ListTargets", call("ListTargets", r#"{"limit": 5}"#).await);
    assert_eq!(targets[0]["targets"][0]["target"], "/index.html");
    assert_eq!(targets[0]["targets"][0]["servers"][0]["nodeId"], "node-a");

    ok("Drain", call("Drain", r#"{"nodeId": "node-a"}"#).await);
    let drained = ok("ListNodes", call("ListNodes", "{}").await);
    assert_eq!(drained[0]["nodes"][0]["drained"], true);
    ok("Undrain", call("Undrain", r#"{"nodeId": "node-a"}"#).await);
    let undrained = ok("ListNodes", call("ListNodes", "{}").await);
    assert!(
        undrained[0]["nodes"][0].get("drained").is_none(),
        "false is omitted in JSON"
    );

    ok(
        "SetContainer",
        call(
            "SetContainer",
            r#"{"container": {"name": "batch", "shares": 2, "limits": {"connectionsMax": 100}}, "create": true}"#,
        )
        .await,
    );
    let containers = ok("ListContainers", call("ListContainers", "{}").await);
    let names: Vec<&str> = containers[0]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|status| status["container"]["name"].as_str())
        .collect();
    assert_eq!(names, ["batch", "default"]);
    assert_eq!(containers[0]["containers"][1]["cpuTimeUs"], "1000");

    let reloaded = ok(
        "ReloadNode",
        call("ReloadNode", r#"{"nodeId": "node-a"}"#).await,
    );
    let outcome = common::reload_outcome();
    assert_eq!(reloaded[0]["applied"], serde_json::json!(outcome.applied));
    assert_eq!(reloaded[0]["kept"], serde_json::json!(outcome.kept));
    assert_eq!(
        hooks.record.lock().unwrap().reloads,
        1,
        "the node reloaded once"
    );
    let unknown = call("ReloadNode", r#"{"nodeId": "node-z"}"#).await;
    assert_eq!(
        unknown.expect_err("not registered").code(),
        tonic::Code::NotFound
    );

    // The node's kernel refuses sampling (the recording hooks): the operator is told so, naming the setting.
    called.insert("ProfileNode");
    let refused = call("ProfileNode", r#"{"nodeId": "node-a", "seconds": 1}"#)
        .await
        .expect_err("the node's kernel refuses sampling");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("perf_event_paranoid"),
        "{refused:?}"
    );

    let every_method: BTreeSet<String> = control
        .methods()
        .map(|method| method.name().to_string())
        .collect();
    let called: BTreeSet<String> = called.into_iter().map(str::to_string).collect();
    assert_eq!(called, every_method, "every Control method was called");

    agent.shutdown();
    plane.shutdown().expect("clean shutdown");
}
