//! DescribeConfigs (key 32), v1-4: topic configs (every key ringtail
//! supports, with sources and synonyms as Kafka reports them), the
//! broker's own settings (static ones read-only, dynamic ones with the
//! value in force and its synonyms) and the cluster-wide dynamic defaults.

use std::rc::Rc;

use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::cluster::image::MetadataImage;
use crate::cluster::{broker_config, topic_config};
use crate::shard::Shard;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_BROKER: i8 = 2;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn entry(name: &str, value: &str, source: i8) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_config_source(source)
        .with_read_only(source == SOURCE_STATIC_BROKER)
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_source(source)
}

/// The broker-level values of one topic config on this broker, most
/// specific first, as Kafka lists synonyms: this broker's dynamic value,
/// the cluster-wide dynamic default, then the static or default value.
fn broker_synonyms(
    shard: &Shard,
    image: &MetadataImage,
    spec: &topic_config::KeySpec,
) -> Vec<DescribeConfigsSynonym> {
    let mut out = Vec::new();
    let scopes = [
        (shard.config.node_id.to_string(), SOURCE_DYNAMIC_BROKER),
        (String::new(), SOURCE_DYNAMIC_DEFAULT_BROKER),
    ];
    for (scope, source) in scopes {
        if let Some(v) = image
            .broker_configs
            .get(&scope)
            .and_then(|c| c.get(spec.broker_name))
            .filter(|v| topic_config::validate(spec.name, v).is_ok())
        {
            out.push(synonym(spec.broker_name, v, source));
        }
    }
    let default_source = if spec.from_broker_config {
        SOURCE_STATIC_BROKER
    } else {
        SOURCE_DEFAULT
    };
    out.push(synonym(
        spec.broker_name,
        &spec.default_value(&shard.config),
        default_source,
    ));
    out
}

/// Every topic config ringtail supports (what `kafka-configs --describe
/// --all` lists), each with its source and, as Kafka gives them, its
/// synonyms: the topic override, then the broker settings it falls back to.
fn topic_configs(
    shard: &Shard,
    name: &str,
) -> Result<Vec<DescribeConfigsResourceResult>, ResponseError> {
    let image = shard.image();
    let meta = image
        .topic(name)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let mut out: Vec<_> = topic_config::KEYS
        .iter()
        .map(|spec| {
            let mut synonyms = broker_synonyms(shard, &image, spec);
            let e = match meta.configs.get(spec.name) {
                Some(set) => {
                    synonyms.insert(0, synonym(spec.name, set, SOURCE_DYNAMIC_TOPIC));
                    entry(spec.name, set, SOURCE_DYNAMIC_TOPIC)
                }
                None => {
                    let first = &synonyms[0];
                    DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(spec.name))
                        .with_value(first.value.clone())
                        .with_config_source(first.source)
                }
            };
            e.with_config_type(spec.kind as i8).with_synonyms(synonyms)
        })
        .collect();
    for (k, v) in &meta.configs {
        if !out.iter().any(|e| e.name.as_str() == k) {
            out.push(entry(k, v, SOURCE_DYNAMIC_TOPIC));
        }
    }
    Ok(out)
}

/// The broker's static settings (read-only). The topic configs' broker
/// synonyms (compression.type, message.max.bytes...) are dynamic and
/// listed by [`broker_configs`] with their sources.
fn static_broker_configs(shard: &Shard) -> Vec<DescribeConfigsResourceResult> {
    let c = &shard.config;
    [
        ("node.id", c.node_id.to_string()),
        ("broker.id", c.node_id.to_string()),
        ("log.dirs", c.data_dir.display().to_string()),
        ("num.partitions", c.default_partitions.to_string()),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
        ),
        ("socket.request.max.bytes", c.max_request_bytes.to_string()),
        ("default.replication.factor", "1".to_string()),
        ("offsets.topic.replication.factor", "1".to_string()),
        ("log.cleaner.enable", "true".to_string()),
        (
            "log.cleaner.backoff.ms",
            c.log_cleaner_backoff_ms.to_string(),
        ),
        (
            "log.cleaner.io.max.bytes.per.second",
            c.log_cleaner_io_max_bytes_per_second.to_string(),
        ),
        (
            "log.cleaner.dedupe.buffer.size",
            c.log_cleaner_dedupe_buffer_bytes.to_string(),
        ),
        (
            "log.cleaner.io.buffer.size",
            c.log_cleaner_io_buffer_bytes.to_string(),
        ),
        (
            "offsets.topic.segment.bytes",
            c.offsets_topic_segment_bytes.to_string(),
        ),
    ]
    .iter()
    .map(|(k, v)| entry(k, v, SOURCE_STATIC_BROKER))
    .collect()
}

/// One broker's configs: the static ones and every dynamic key with the
/// value in force here and its synonyms (`--all`); Kafka's tools show the
/// dynamic ones by their source.
fn broker_configs(shard: &Shard) -> Vec<DescribeConfigsResourceResult> {
    let image = shard.image();
    let mut out = static_broker_configs(shard);
    for spec in topic_config::KEYS {
        let synonyms = broker_synonyms(shard, &image, spec);
        let first = &synonyms[0];
        out.push(
            DescribeConfigsResourceResult::default()
                .with_name(str_bytes(spec.broker_name))
                .with_value(first.value.clone())
                .with_config_source(first.source)
                .with_config_type(spec.kind as i8)
                .with_synonyms(synonyms),
        );
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// The cluster-wide dynamic defaults (`--entity-default`): only those set.
fn default_broker_configs(shard: &Shard) -> Vec<DescribeConfigsResourceResult> {
    let image = shard.image();
    image
        .broker_configs
        .get("")
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let e = entry(k, v, SOURCE_DYNAMIC_DEFAULT_BROKER).with_synonyms(vec![synonym(
                k,
                v,
                SOURCE_DYNAMIC_DEFAULT_BROKER,
            )]);
            match broker_config::spec(k) {
                Some(spec) => e.with_config_type(spec.kind as i8),
                None => e,
            }
        })
        .collect()
}

pub fn describe(
    shard: &Rc<Shard>,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .iter()
        .map(|r| {
            let name = r.resource_name.to_string();
            let configs = match r.resource_type {
                RESOURCE_TOPIC => topic_configs(shard, &name),
                RESOURCE_BROKER if name.is_empty() => Ok(default_broker_configs(shard)),
                RESOURCE_BROKER if name == shard.config.node_id.to_string() => {
                    Ok(broker_configs(shard))
                }
                RESOURCE_BROKER => Err(ResponseError::InvalidRequest),
                _ => Err(ResponseError::InvalidRequest),
            };
            let base = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            match configs {
                Ok(mut c) => {
                    if let Some(keys) = &r.configuration_keys {
                        c.retain(|e| keys.iter().any(|k| k.as_str() == e.name.as_str()));
                    }
                    if !req.include_synonyms {
                        for e in &mut c {
                            e.synonyms.clear();
                        }
                    }
                    base.with_configs(c)
                }
                Err(e) => base
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(&e.to_string()))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
