//! DescribeCluster (key 60) v0-2, ElectLeaders (key 43) v0-2 and
//! DescribeQuorum (key 55) v0-2: the cluster as `kafka-cluster`,
//! `kafka-leader-election` and `kafka-metadata-quorum` see it. Elections are
//! decided by the active controller (forwarded there from any broker); the
//! quorum is described from this node's Raft state.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::describe_quorum_request::DescribeQuorumRequest;
use kafka_protocol::messages::describe_quorum_response::{
    self as dq, DescribeQuorumResponse, Listener, Node,
};
use kafka_protocol::messages::elect_leaders_request::ElectLeadersRequest;
use kafka_protocol::messages::elect_leaders_response::{
    ElectLeadersResponse, PartitionResult, ReplicaElectionResult,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::ResponseError;

use super::metadata::controller_id;
use super::{controller_error_code, str_bytes};
use crate::cluster::controller::{ControllerReply, ControllerRequest};
use crate::shard::Shard;

/// DescribeCluster's endpoint types: brokers (1) and controllers (2).
const ENDPOINT_BROKERS: i8 = 1;
/// The metadata log's topic, as Kafka names it.
const METADATA_TOPIC: &str = "__cluster_metadata";
/// ElectLeaders' election types.
const ELECTION_PREFERRED: i8 = 0;

pub async fn describe_cluster(
    shard: &Rc<Shard>,
    req: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    let image = shard.image();
    let response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(image.cluster_id.as_deref().unwrap_or("")))
        .with_controller_id(BrokerId(controller_id(shard).await))
        .with_endpoint_type(ENDPOINT_BROKERS)
        .with_cluster_authorized_operations(i32::MIN);
    if req.endpoint_type != ENDPOINT_BROKERS {
        // Every voter is also a broker: controllers are reached through the
        // brokers' listener, as in Kafka's combined mode.
        return response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes(
                "only broker endpoints are described; controllers are reached through brokers",
            )));
    }
    let brokers = image
        .brokers
        .values()
        .filter(|b| req.include_fenced_brokers || !b.fenced)
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.registration.node_id))
                .with_host(str_bytes(&b.registration.host))
                .with_port(b.registration.port)
                .with_rack(b.registration.rack.as_deref().map(str_bytes))
                .with_is_fenced(b.fenced)
        })
        .collect();
    response.with_brokers(brokers)
}

pub async fn elect_leaders(
    shard: &Rc<Shard>,
    req: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let wanted: Option<Vec<(String, i32)>> = req.topic_partitions.as_ref().map(|tps| {
        tps.iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.to_string(), *p)))
            .collect()
    });
    if req.election_type != ELECTION_PREFERRED {
        // Unclean election could acknowledge writes and then lose them:
        // ringtail never elects a leader outside the ISR.
        const WHY: &str =
            "unclean leader election is off in ringtail; only preferred elections are accepted";
        let code = ResponseError::InvalidRequest.code();
        let results = per_topic(
            wanted
                .unwrap_or_default()
                .into_iter()
                .map(|tp| (tp, code, Some(WHY))),
        );
        let response = ElectLeadersResponse::default().with_replica_election_results(results);
        return if version >= 1 {
            response.with_error_code(code)
        } else {
            response
        };
    }
    let reply = shard
        .controller_call(ControllerRequest::ElectPreferredLeaders {
            partitions: wanted.clone(),
        })
        .await;
    match reply {
        Ok(ControllerReply::ElectLeaders(results)) => ElectLeadersResponse::default()
            .with_replica_election_results(per_topic(results.into_iter().map(|(tp, r)| match r {
                Ok(()) => (tp, 0, None),
                Err(e) => (tp, controller_error_code(&e).code(), None),
            }))),
        Ok(other) => {
            tracing::error!(?other, "unexpected controller reply to ElectLeaders");
            failed(version, wanted, ResponseError::UnknownServerError.code())
        }
        Err(e) => failed(version, wanted, controller_error_code(&e).code()),
    }
}

fn failed(version: i16, wanted: Option<Vec<(String, i32)>>, code: i16) -> ElectLeadersResponse {
    let results = per_topic(
        wanted
            .unwrap_or_default()
            .into_iter()
            .map(|tp| (tp, code, None)),
    );
    let response = ElectLeadersResponse::default().with_replica_election_results(results);
    if version >= 1 {
        response.with_error_code(code)
    } else {
        response
    }
}

/// Groups per-partition outcomes by topic, in order of first appearance.
fn per_topic<'a>(
    outcomes: impl Iterator<Item = ((String, i32), i16, Option<&'a str>)>,
) -> Vec<ReplicaElectionResult> {
    let mut out: Vec<ReplicaElectionResult> = Vec::new();
    for ((topic, partition), code, message) in outcomes {
        let result = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(code)
            .with_error_message(message.map(str_bytes));
        match out.iter_mut().find(|r| r.topic.as_str() == topic) {
            Some(r) => r.partition_result.push(result),
            None => out.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str_bytes(&topic)))
                    .with_partition_result(vec![result]),
            ),
        }
    }
    out
}

pub async fn describe_quorum(
    shard: &Rc<Shard>,
    req: DescribeQuorumRequest,
    version: i16,
) -> DescribeQuorumResponse {
    let asked_metadata = req.topics.iter().any(|t| {
        t.topic_name.as_str() == METADATA_TOPIC
            && t.partitions.iter().any(|p| p.partition_index == 0)
    });
    if !asked_metadata {
        return DescribeQuorumResponse::default()
            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
    }
    // Forwarded to the active controller's node, which knows every voter.
    let status = match shard
        .controller_call(ControllerRequest::DescribeQuorum)
        .await
    {
        Ok(ControllerReply::Quorum(status)) => status,
        Ok(other) => {
            tracing::error!(?other, "unexpected controller reply to DescribeQuorum");
            return DescribeQuorumResponse::default()
                .with_error_code(ResponseError::UnknownServerError.code());
        }
        Err(e) => {
            let response =
                DescribeQuorumResponse::default().with_error_code(controller_error_code(&e).code());
            return if version >= 2 {
                response.with_error_message(Some(str_bytes(&e.to_string())))
            } else {
                response
            };
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let leader = status.leader.unwrap_or(-1);
    let voters = status
        .voters
        .iter()
        .map(|v| {
            let state = dq::ReplicaState::default()
                .with_replica_id(BrokerId(v.node_id))
                .with_log_end_offset(v.log_end_offset);
            if version < 1 {
                return state;
            }
            state
                .with_last_fetch_timestamp(if v.recently_heard { now_ms } else { -1 })
                .with_last_caught_up_timestamp(if v.caught_up { now_ms } else { -1 })
        })
        .collect();
    let partition = dq::PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(BrokerId(leader))
        .with_leader_epoch(status.term as i32)
        .with_high_watermark(status.high_watermark as i64)
        .with_current_voters(voters);
    // Voters' endpoints exist from v2.
    let nodes = if version < 2 {
        Vec::new()
    } else {
        status
            .voters
            .iter()
            .filter_map(|v| {
                let (host, port) = v.endpoint.clone()?;
                Some(
                    Node::default()
                        .with_node_id(BrokerId(v.node_id))
                        .with_listeners(vec![Listener::default()
                            .with_name(str_bytes("CONTROLLER"))
                            .with_host(str_bytes(&host))
                            .with_port(port)]),
                )
            })
            .collect()
    };
    DescribeQuorumResponse::default()
        .with_topics(vec![dq::TopicData::default()
            .with_topic_name(TopicName(str_bytes(METADATA_TOPIC)))
            .with_partitions(vec![partition])])
        .with_nodes(nodes)
}
