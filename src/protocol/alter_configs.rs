//! IncrementalAlterConfigs (key 44) v0-1 and AlterConfigs (key 33) v0-2:
//! topic config changes, decided by the active controller (forwarded there
//! from any broker), committed to the metadata log and applied by every
//! broker's partitions without a restart. Each resource is checked whole
//! (unknown keys, values ringtail cannot honour: INVALID_CONFIG) before
//! anything changes. BROKER resources change the dynamic broker configs
//! (the topic configs' broker-level defaults, see
//! [`broker_config`](crate::cluster::broker_config)) of one broker or, with
//! an empty name, of the whole cluster; static keys are refused.

use std::collections::BTreeSet;
use std::rc::Rc;

use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse as LegacyResult, AlterConfigsResponse,
};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::topics::applied_here;
use super::{controller_error_code, str_bytes};
use crate::cluster::broker_config::Scope;
use crate::cluster::controller::{ControllerReply, ControllerRequest};
use crate::cluster::topic_config::ConfigOp;
use crate::shard::Shard;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

type Outcome = Result<(), (ResponseError, String)>;

fn invalid(why: impl Into<String>) -> Outcome {
    Err((ResponseError::InvalidRequest, why.into()))
}

/// Changes one resource's configs.
async fn alter(
    shard: &Rc<Shard>,
    resource_type: i8,
    name: &StrBytes,
    ops: Result<Vec<ConfigOp>, String>,
    replace: bool,
    validate_only: bool,
) -> Outcome {
    let ops = match ops {
        Ok(ops) => ops,
        Err(why) => return invalid(why),
    };
    if !matches!(resource_type, RESOURCE_TOPIC | RESOURCE_BROKER) {
        return invalid(format!("resource type {resource_type} has no configs here"));
    }
    let mut keys = BTreeSet::new();
    for op in &ops {
        let (ConfigOp::Set(k, _)
        | ConfigOp::Delete(k)
        | ConfigOp::Append(k, _)
        | ConfigOp::Subtract(k, _)) = op;
        if !keys.insert(k.clone()) {
            return invalid(format!("config {k} is listed twice"));
        }
    }
    if resource_type == RESOURCE_BROKER {
        return alter_broker(shard, name, ops, replace, validate_only).await;
    }
    let topic = name.to_string();
    let reply = shard
        .controller_call(ControllerRequest::AlterTopicConfigs {
            topic: topic.clone(),
            ops,
            replace,
            validate_only,
        })
        .await;
    match reply {
        Ok(ControllerReply::Done) => {
            if !validate_only {
                // The next DescribeConfigs here sees the change.
                let id = shard.image().topic(&topic).map(|t| t.id);
                let offset = shard.image().offset;
                applied_here(shard, |i| {
                    i.offset > offset || i.topic(&topic).map(|t| t.id) != id
                })
                .await;
            }
            Ok(())
        }
        Ok(other) => Err((
            ResponseError::UnknownServerError,
            format!("unexpected controller reply {other:?}"),
        )),
        Err(e) => Err((controller_error_code(&e), e.to_string())),
    }
}

/// Changes the dynamic configs of one broker or of the cluster default.
async fn alter_broker(
    shard: &Rc<Shard>,
    name: &StrBytes,
    ops: Vec<ConfigOp>,
    replace: bool,
    validate_only: bool,
) -> Outcome {
    let scope = match Scope::parse(name.as_str()) {
        Ok(scope) => scope,
        Err(why) => return invalid(why),
    };
    let offset = shard.image().offset;
    let reply = shard
        .controller_call(ControllerRequest::AlterBrokerConfigs {
            broker: scope.broker(),
            ops,
            replace,
            validate_only,
        })
        .await;
    match reply {
        Ok(ControllerReply::Done) => {
            if !validate_only {
                applied_here(shard, |i| i.offset > offset).await;
            }
            Ok(())
        }
        Ok(other) => Err((
            ResponseError::UnknownServerError,
            format!("unexpected controller reply {other:?}"),
        )),
        Err(e) => Err((controller_error_code(&e), e.to_string())),
    }
}

/// A resource's error code and message as both responses carry them.
fn error_fields(outcome: Outcome) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((e, why)) => (e.code(), Some(str_bytes(&why))),
    }
}

fn incremental_ops(
    configs: &[kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig],
) -> Result<Vec<ConfigOp>, String> {
    configs
        .iter()
        .map(|c| {
            let name = c.name.to_string();
            let value = || {
                c.value
                    .as_ref()
                    .map(|v| v.to_string())
                    .ok_or_else(|| format!("null value for {name}"))
            };
            Ok(match c.config_operation {
                0 => ConfigOp::Set(name.clone(), value()?),
                1 => ConfigOp::Delete(name.clone()),
                2 => ConfigOp::Append(name.clone(), value()?),
                3 => ConfigOp::Subtract(name.clone(), value()?),
                op => return Err(format!("unknown config operation {op} for {name}")),
            })
        })
        .collect()
}

pub async fn incremental(
    shard: &Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in &req.resources {
        let ops = incremental_ops(&r.configs);
        let outcome = alter(
            shard,
            r.resource_type,
            &r.resource_name,
            ops,
            false,
            req.validate_only,
        )
        .await;
        let (code, message) = error_fields(outcome);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone()),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// AlterConfigs replaces every override of the resource with those given.
pub async fn legacy(
    shard: &Rc<Shard>,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in &req.resources {
        let ops: Result<Vec<ConfigOp>, String> = r
            .configs
            .iter()
            .map(|c| {
                let name = c.name.to_string();
                c.value
                    .as_ref()
                    .map(|v| ConfigOp::Set(name.clone(), v.to_string()))
                    .ok_or_else(|| format!("null value for {name}"))
            })
            .collect();
        let outcome = alter(
            shard,
            r.resource_type,
            &r.resource_name,
            ops,
            true,
            req.validate_only,
        )
        .await;
        let (code, message) = error_fields(outcome);
        responses.push(
            LegacyResult::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone()),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}
