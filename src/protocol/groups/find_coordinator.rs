//! FindCoordinator (key 10), v0-4: the broker coordinating a group
//! (key type 0). Transaction coordinators (key type 1) do not exist yet:
//! see [`NO_TRANSACTIONS`].

use std::rc::Rc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::coordinator_of;
use crate::protocol::str_bytes;
use crate::shard::Shard;

/// Answer to FindCoordinator for a transactional id and to InitProducerId
/// with a transactional id, until this broker has a transaction coordinator.
///
/// UNSUPPORTED_VERSION because it is not retriable in any client, so a
/// transactional producer fails at once instead of retrying until its
/// timeout (the retriable COORDINATOR_NOT_AVAILABLE kept the Java producer
/// waiting `max.block.ms`, 60 s, kafkajs 6-9 s, and `kafka-transactions`
/// looking the coordinator up in a loop), and because what it says is true:
/// the broker does not serve the transactional APIs. What each client does
/// with it:
/// - Java producer (initTransactions): "KafkaException: Could not find a
///   coordinator with type TRANSACTION with key ... due to unexpected error:
///   " followed by the message below (FindCoordinator v1+ carries it).
/// - Java AdminClient (describeTransactions): UnsupportedVersionException
///   "FindCoordinator request for key ... type=TRANSACTION ... failed due to
///   an unexpected error"; `kafka-transactions describe` prints that message
///   and exits 1 at once.
/// - kafkajs: the non-retriable "The version of API is not supported"
///   makes its lookup give up on the broker, and producer.transaction()
///   fails within milliseconds with KafkaJSGroupCoordinatorNotFound
///   (retriable: false); it does not show the broker's message.
/// - kafka-python: KafkaError "Could not find a coordinator with type 1 ...
///   due to unexpected error: [Error 35] UnsupportedVersionError".
///
/// INVALID_REQUEST would tell the user their client sent a malformed request;
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED would send them looking for ACLs
/// (and the Java producer treats it as abortable at InitProducerId).
pub const NO_TRANSACTIONS: (ResponseError, &str) = (
    ResponseError::UnsupportedVersion,
    "Transactions are not supported by this broker (ringtail has no transaction coordinator)",
);

/// Kafka's coordinator key types.
const GROUP_KEY_TYPE: i8 = 0;
const TRANSACTION_KEY_TYPE: i8 = 1;

/// The coordinator of `key`, or the error with its message.
fn answer(
    shard: &Shard,
    key_type: i8,
    key: &str,
) -> Result<(i32, String, i32), (ResponseError, String)> {
    match key_type {
        GROUP_KEY_TYPE => coordinator_of(shard, key).map_err(|e| (e, e.to_string())),
        TRANSACTION_KEY_TYPE => Err((NO_TRANSACTIONS.0, NO_TRANSACTIONS.1.to_string())),
        // Kafka: "Unknown coordinator type in FindCoordinator request".
        other => Err((
            ResponseError::InvalidRequest,
            format!("Unknown coordinator type {other} in FindCoordinator request"),
        )),
    }
}

pub fn find_coordinator(
    shard: &Rc<Shard>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let c = Coordinator::default().with_key(k.clone());
                match answer(shard, req.key_type, k.as_str()) {
                    Ok((node, host, port)) => c
                        .with_node_id(BrokerId(node))
                        .with_host(str_bytes(&host))
                        .with_port(port),
                    Err((e, message)) => c
                        .with_error_code(e.code())
                        .with_error_message(Some(str_bytes(&message)))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match answer(shard, req.key_type, req.key.as_str()) {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(node))
            .with_host(str_bytes(&host))
            .with_port(port),
        Err((e, message)) => {
            let resp = FindCoordinatorResponse::default()
                .with_error_code(e.code())
                .with_node_id(BrokerId(-1))
                .with_port(-1);
            if version >= 1 {
                resp.with_error_message(Some(str_bytes(&message)))
            } else {
                resp
            }
        }
    }
}
