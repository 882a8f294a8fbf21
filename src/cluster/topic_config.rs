//! Topic configs: every key ringtail supports, its type, its broker-level
//! synonym and default, the values it accepts, and the typed view the
//! partitions apply ([`TopicConfig`]). A key that is not listed, or a value
//! whose behaviour ringtail does not have, is refused with a reason
//! (INVALID_CONFIG), never accepted and ignored.
//!
//! Pure; used by CreateTopics and the config APIs (validation), by the
//! controller (incremental changes), by DescribeConfigs and by the shards,
//! which resolve the image's overrides into a [`TopicConfig`] per topic.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::record::{CompressionLevels, CompressionType};

/// Kafka's `Long.MAX_VALUE` default ("never").
pub const LONG_MAX: i64 = i64::MAX;

/// The value types DescribeConfigs reports (Kafka's ConfigType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// One supported topic config.
pub struct KeySpec {
    pub name: &'static str,
    /// The broker config it falls back to (Kafka's synonym).
    pub broker_name: &'static str,
    pub kind: ConfigType,
    /// The default when the broker sets nothing.
    default: fn(&Config) -> String,
    /// Whether `default` comes from the broker's own configuration.
    pub from_broker_config: bool,
    check: fn(&str) -> Result<(), String>,
}

impl KeySpec {
    pub fn default_value(&self, broker: &Config) -> String {
        (self.default)(broker)
    }
}

fn long_at_least(min: i64) -> impl Fn(&str) -> Result<(), String> {
    move |v| match v.trim().parse::<i64>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(format!("must be a whole number of at least {min}")),
    }
}

fn check_long_min1(v: &str) -> Result<(), String> {
    long_at_least(-1)(v)
}
fn check_long_min0(v: &str) -> Result<(), String> {
    long_at_least(0)(v)
}
fn check_long_min1_pos(v: &str) -> Result<(), String> {
    long_at_least(1)(v)
}
fn check_int_min0(v: &str) -> Result<(), String> {
    match v.trim().parse::<i32>() {
        Ok(n) if n >= 0 => Ok(()),
        _ => Err("must be a whole number from 0 to 2147483647".into()),
    }
}
fn check_max_message_bytes(v: &str) -> Result<(), String> {
    let max = crate::config::MIN_RECOVERED_BATCH_BYTES;
    match v.trim().parse::<usize>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(format!(
            "must be 0..{max} (the largest batch recovery reads back)"
        )),
    }
}
fn check_min_isr(v: &str) -> Result<(), String> {
    match v.trim().parse::<i32>() {
        Ok(n) if n >= 1 => Ok(()),
        _ => Err("must be a whole number of at least 1".into()),
    }
}
fn check_segment_bytes(v: &str) -> Result<(), String> {
    match v.trim().parse::<u64>() {
        Ok(n) if (16384..=i32::MAX as u64).contains(&n) => Ok(()),
        _ => Err("must be 16384..2147483647".into()),
    }
}
fn check_index_bytes(v: &str) -> Result<(), String> {
    match v.trim().parse::<i32>() {
        Ok(n) if n >= 8 => Ok(()),
        _ => Err("must be a whole number of at least 8 (one index entry)".into()),
    }
}
fn check_ratio(v: &str) -> Result<(), String> {
    match v.trim().parse::<f64>() {
        Ok(n) if (0.0..=1.0).contains(&n) => Ok(()),
        _ => Err("must be a number from 0 to 1".into()),
    }
}
fn check_cleanup_policy(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    if parts.iter().all(|p| matches!(*p, "delete" | "compact")) {
        return Ok(());
    }
    Err("must be a list of delete and compact".into())
}
fn check_compression(v: &str) -> Result<(), String> {
    crate::config::check_compression_type(v)
}
fn check_gzip_level(v: &str) -> Result<(), String> {
    crate::config::check_compression_level("gzip", v)
}
fn check_lz4_level(v: &str) -> Result<(), String> {
    crate::config::check_compression_level("lz4", v)
}
fn check_zstd_level(v: &str) -> Result<(), String> {
    crate::config::check_compression_level("zstd", v)
}
fn check_timestamp_type(v: &str) -> Result<(), String> {
    match v.trim() {
        "CreateTime" | "LogAppendTime" => Ok(()),
        _ => Err("must be CreateTime or LogAppendTime".into()),
    }
}
fn check_bool(v: &str) -> Result<(), String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "false" => Ok(()),
        _ => Err("must be true or false".into()),
    }
}
fn check_unclean(v: &str) -> Result<(), String> {
    check_bool(v)?;
    if v.trim().eq_ignore_ascii_case("true") {
        return Err(
            "unclean leader election is not available: only ISR members are elected".into(),
        );
    }
    Ok(())
}
fn check_flush(v: &str) -> Result<(), String> {
    check_long_min1_pos(v)?;
    if v.trim() != LONG_MAX.to_string() {
        return Err(
            "per-topic flushing is not available: the broker's flush_policy decides (group_commit syncs before every acknowledgement)"
                .into(),
        );
    }
    Ok(())
}
fn check_jitter(v: &str) -> Result<(), String> {
    check_long_min0(v)?;
    if v.trim() != "0" {
        return Err("segment.jitter.ms is not available in ringtail yet: only 0".into());
    }
    Ok(())
}

/// Every supported topic config, in Kafka's alphabetical order.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        kind: ConfigType::List,
        default: |_| "delete".into(),
        from_broker_config: false,
        check: check_cleanup_policy,
    },
    KeySpec {
        name: "compression.gzip.level",
        broker_name: "compression.gzip.level",
        kind: ConfigType::Int,
        default: |c| c.compression_gzip_level.to_string(),
        from_broker_config: true,
        check: check_gzip_level,
    },
    KeySpec {
        name: "compression.lz4.level",
        broker_name: "compression.lz4.level",
        kind: ConfigType::Int,
        default: |c| c.compression_lz4_level.to_string(),
        from_broker_config: true,
        check: check_lz4_level,
    },
    KeySpec {
        name: "compression.type",
        broker_name: "compression.type",
        kind: ConfigType::String,
        default: |c| c.compression_type.clone(),
        from_broker_config: true,
        check: check_compression,
    },
    KeySpec {
        name: "compression.zstd.level",
        broker_name: "compression.zstd.level",
        kind: ConfigType::Int,
        default: |c| c.compression_zstd_level.to_string(),
        from_broker_config: true,
        check: check_zstd_level,
    },
    KeySpec {
        name: "delete.retention.ms",
        broker_name: "log.cleaner.delete.retention.ms",
        kind: ConfigType::Long,
        default: |_| "86400000".into(),
        from_broker_config: false,
        check: check_long_min0,
    },
    KeySpec {
        name: "file.delete.delay.ms",
        broker_name: "log.segment.delete.delay.ms",
        kind: ConfigType::Long,
        default: |_| "60000".into(),
        from_broker_config: false,
        check: check_long_min0,
    },
    KeySpec {
        name: "flush.messages",
        broker_name: "log.flush.interval.messages",
        kind: ConfigType::Long,
        default: |_| LONG_MAX.to_string(),
        from_broker_config: false,
        check: check_flush,
    },
    KeySpec {
        name: "flush.ms",
        broker_name: "log.flush.interval.ms",
        kind: ConfigType::Long,
        default: |_| LONG_MAX.to_string(),
        from_broker_config: false,
        check: check_flush,
    },
    KeySpec {
        name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        kind: ConfigType::Int,
        default: |c| c.index_interval_bytes.to_string(),
        from_broker_config: true,
        check: check_int_min0,
    },
    KeySpec {
        name: "max.compaction.lag.ms",
        broker_name: "log.cleaner.max.compaction.lag.ms",
        kind: ConfigType::Long,
        default: |_| LONG_MAX.to_string(),
        from_broker_config: false,
        check: check_long_min1_pos,
    },
    KeySpec {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        kind: ConfigType::Int,
        default: |c| c.max_message_bytes.to_string(),
        from_broker_config: true,
        check: check_max_message_bytes,
    },
    KeySpec {
        name: "message.timestamp.after.max.ms",
        broker_name: "log.message.timestamp.after.max.ms",
        kind: ConfigType::Long,
        default: |_| "3600000".into(),
        from_broker_config: false,
        check: check_long_min0,
    },
    KeySpec {
        name: "message.timestamp.before.max.ms",
        broker_name: "log.message.timestamp.before.max.ms",
        kind: ConfigType::Long,
        default: |_| LONG_MAX.to_string(),
        from_broker_config: false,
        check: check_long_min0,
    },
    KeySpec {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        kind: ConfigType::String,
        default: |_| "CreateTime".into(),
        from_broker_config: false,
        check: check_timestamp_type,
    },
    KeySpec {
        name: "min.cleanable.dirty.ratio",
        broker_name: "log.cleaner.min.cleanable.ratio",
        kind: ConfigType::Double,
        default: |_| "0.5".into(),
        from_broker_config: false,
        check: check_ratio,
    },
    KeySpec {
        name: "min.compaction.lag.ms",
        broker_name: "log.cleaner.min.compaction.lag.ms",
        kind: ConfigType::Long,
        default: |_| "0".into(),
        from_broker_config: false,
        check: check_long_min0,
    },
    KeySpec {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        kind: ConfigType::Int,
        default: |c| c.min_insync_replicas.to_string(),
        from_broker_config: true,
        check: check_min_isr,
    },
    KeySpec {
        name: "preallocate",
        broker_name: "log.preallocate",
        kind: ConfigType::Boolean,
        default: |c| c.preallocate.to_string(),
        from_broker_config: true,
        check: check_bool,
    },
    KeySpec {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        kind: ConfigType::Long,
        default: |_| "-1".into(),
        from_broker_config: false,
        check: check_long_min1,
    },
    KeySpec {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        kind: ConfigType::Long,
        default: |_| "604800000".into(),
        from_broker_config: false,
        check: check_long_min1,
    },
    KeySpec {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        kind: ConfigType::Int,
        default: |c| c.segment_bytes.to_string(),
        from_broker_config: true,
        check: check_segment_bytes,
    },
    KeySpec {
        name: "segment.index.bytes",
        broker_name: "log.index.size.max.bytes",
        kind: ConfigType::Int,
        default: |_| "10485760".into(),
        from_broker_config: false,
        check: check_index_bytes,
    },
    KeySpec {
        name: "segment.jitter.ms",
        broker_name: "log.roll.jitter.ms",
        kind: ConfigType::Long,
        default: |_| "0".into(),
        from_broker_config: false,
        check: check_jitter,
    },
    KeySpec {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        kind: ConfigType::Long,
        default: |_| "604800000".into(),
        from_broker_config: false,
        check: check_long_min1_pos,
    },
    KeySpec {
        name: "unclean.leader.election.enable",
        broker_name: "unclean.leader.election.enable",
        kind: ConfigType::Boolean,
        default: |_| "false".into(),
        from_broker_config: false,
        check: check_unclean,
    },
];

pub fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

/// Checks one key and value as a topic override.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let Some(spec) = spec(name) else {
        let hint = match name {
            "message.timestamp.difference.max.ms" => {
                ": removed in Kafka 4.0, use message.timestamp.before.max.ms and message.timestamp.after.max.ms"
            }
            _ => "",
        };
        return Err(format!("unknown topic config {name}{hint}"));
    };
    (spec.check)(value).map_err(|why| format!("{name}={value}: {why}"))
}

/// Checks every override of a topic.
pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), String> {
    configs.iter().try_for_each(|(k, v)| validate(k, v))
}

/// A topic's configs as the partitions apply them.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// cleanup.policy includes delete: retention applies.
    pub cleanup_delete: bool,
    /// cleanup.policy includes compact: the log cleaner applies, with
    /// the four settings below (`log/cleaner/`).
    pub cleanup_compact: bool,
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub max_message_bytes: usize,
    pub log_append_time: bool,
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    pub min_insync_replicas: usize,
    /// -1: no limit.
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub segment_index_bytes: usize,
    pub index_interval_bytes: u64,
    pub preallocate: bool,
    pub file_delete_delay_ms: u64,
    /// compression.type: the codec batches are stored in.
    pub compression: CompressionType,
    /// compression.<codec>.level of the codec recompression writes.
    pub compression_levels: CompressionLevels,
}

impl TopicConfig {
    /// Overrides over the defaults; a value that fails to parse (written
    /// before it was validated) falls back to the default.
    pub fn resolve(overrides: &BTreeMap<String, String>, broker: &Config) -> TopicConfig {
        TopicConfig::resolve_with(overrides, broker, &BTreeMap::new())
    }

    /// As [`TopicConfig::resolve`], with the dynamic broker configs in
    /// force on this broker (by broker key) between the topic's overrides
    /// and the static defaults.
    pub fn resolve_with(
        overrides: &BTreeMap<String, String>,
        broker: &Config,
        dynamic: &BTreeMap<String, String>,
    ) -> TopicConfig {
        let get = |name: &str| -> String { effective_value(name, overrides, broker, dynamic).0 };
        let long = |name: &str| get(name).trim().parse::<i64>().unwrap_or(LONG_MAX);
        // The internal `__consumer_offsets` is created compact: its
        // override counts even where a topic could not set it.
        let policy = overrides
            .get("cleanup.policy")
            .cloned()
            .unwrap_or_else(|| get("cleanup.policy"));
        TopicConfig {
            cleanup_delete: policy.split(',').any(|p| p.trim() == "delete"),
            cleanup_compact: policy.split(',').any(|p| p.trim() == "compact"),
            delete_retention_ms: long("delete.retention.ms").max(0),
            min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio")
                .trim()
                .parse::<f64>()
                .unwrap_or(0.5),
            min_compaction_lag_ms: long("min.compaction.lag.ms").max(0),
            max_compaction_lag_ms: long("max.compaction.lag.ms").max(1),
            max_message_bytes: long("max.message.bytes") as usize,
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            timestamp_before_max_ms: long("message.timestamp.before.max.ms"),
            timestamp_after_max_ms: long("message.timestamp.after.max.ms"),
            min_insync_replicas: long("min.insync.replicas").max(1) as usize,
            retention_ms: long("retention.ms"),
            retention_bytes: long("retention.bytes"),
            segment_bytes: long("segment.bytes") as u64,
            segment_ms: long("segment.ms"),
            segment_index_bytes: long("segment.index.bytes") as usize,
            index_interval_bytes: long("index.interval.bytes").max(0) as u64,
            preallocate: get("preallocate").eq_ignore_ascii_case("true"),
            file_delete_delay_ms: long("file.delete.delay.ms").max(0) as u64,
            compression: CompressionType::from_name(&get("compression.type"))
                .unwrap_or(CompressionType::Producer),
            compression_levels: CompressionLevels {
                gzip: long("compression.gzip.level") as i32,
                lz4: long("compression.lz4.level") as i32,
                zstd: long("compression.zstd.level") as i32,
            },
        }
    }
}

/// Where a topic's effective value of a config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSource {
    Topic,
    DynamicBroker,
    StaticBroker,
    Default,
}

/// A topic's value of `name` and its source: the topic's override, the
/// dynamic broker value in force (`dynamic`, by broker key; its scope is
/// the caller's to tell), the static configuration or the default. Values
/// that fail their check (written before they were validated) are skipped.
pub fn effective_value(
    name: &str,
    overrides: &BTreeMap<String, String>,
    broker: &Config,
    dynamic: &BTreeMap<String, String>,
) -> (String, ValueSource) {
    let spec = spec(name).expect("listed");
    if let Some(v) = overrides.get(name).filter(|v| validate(name, v).is_ok()) {
        return (v.clone(), ValueSource::Topic);
    }
    if let Some(v) = dynamic
        .get(spec.broker_name)
        .filter(|v| validate(name, v).is_ok())
    {
        return (v.clone(), ValueSource::DynamicBroker);
    }
    let source = if spec.from_broker_config {
        ValueSource::StaticBroker
    } else {
        ValueSource::Default
    };
    (spec.default_value(broker), source)
}

/// One incremental change (IncrementalAlterConfigs' operations).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfigOp {
    Set(String, String),
    Delete(String),
    /// Add to a list config.
    Append(String, String),
    /// Remove from a list config.
    Subtract(String, String),
}

/// Applies `ops` to a topic's overrides (`replace`: AlterConfigs, which
/// replaces every override), checking the result. Returns the new map.
pub fn apply_ops(
    current: &BTreeMap<String, String>,
    ops: &[ConfigOp],
    replace: bool,
) -> Result<BTreeMap<String, String>, String> {
    // List configs' defaults do not depend on the broker's settings.
    let broker = &Config::default();
    let mut next = if replace {
        BTreeMap::new()
    } else {
        current.clone()
    };
    for op in ops {
        match op {
            ConfigOp::Set(k, v) => {
                next.insert(k.clone(), v.clone());
            }
            ConfigOp::Delete(k) => {
                if spec(k).is_none() {
                    return Err(format!("unknown topic config {k}"));
                }
                next.remove(k);
            }
            ConfigOp::Append(k, v) | ConfigOp::Subtract(k, v) => {
                let s = spec(k).ok_or_else(|| format!("unknown topic config {k}"))?;
                if s.kind != ConfigType::List {
                    return Err(format!(
                        "{k} is not a list: APPEND and SUBTRACT apply to lists"
                    ));
                }
                let now = next
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| s.default_value(broker));
                let mut items: Vec<String> = now
                    .split(',')
                    .map(|i| i.trim().to_string())
                    .filter(|i| !i.is_empty())
                    .collect();
                for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    if matches!(op, ConfigOp::Append(..)) {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    } else {
                        items.retain(|i| i != item);
                    }
                }
                next.insert(k.clone(), items.join(","));
            }
        }
    }
    validate_all(&next)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Codec;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_keys_and_unavailable_behaviour_are_refused() {
        assert!(validate("retention.ms", "5000").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("no.such.key", "1")
            .unwrap_err()
            .contains("unknown topic config"));
        assert!(validate("cleanup.policy", "compact").is_ok());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "compact,shred").is_err());
        for codec in ["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"] {
            assert!(validate("compression.type", codec).is_ok(), "{codec}");
        }
        assert!(validate("compression.type", "brotli").is_err());
        assert!(validate("compression.gzip.level", "-1").is_ok());
        assert!(validate("compression.gzip.level", "0").is_err());
        assert!(validate("compression.gzip.level", "10").is_err());
        assert!(validate("compression.lz4.level", "17").is_ok());
        assert!(validate("compression.lz4.level", "18").is_err());
        assert!(validate("compression.zstd.level", "-131072").is_ok());
        assert!(validate("compression.zstd.level", "23").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "Sometime").is_err());
        assert!(validate("unclean.leader.election.enable", "true").is_err());
        assert!(validate("flush.ms", "1000").is_err());
        assert!(validate("flush.ms", &LONG_MAX.to_string()).is_ok());
        assert!(validate("message.timestamp.difference.max.ms", "1")
            .unwrap_err()
            .contains("removed"));
    }

    #[test]
    fn resolve_applies_overrides_over_broker_defaults() {
        let broker = Config::default();
        let d = TopicConfig::resolve(&BTreeMap::new(), &broker);
        assert_eq!(d.max_message_bytes, broker.max_message_bytes);
        assert_eq!(
            (d.retention_ms, d.retention_bytes, d.log_append_time),
            (604_800_000, -1, false)
        );
        let t = TopicConfig::resolve(
            &map(&[
                ("retention.ms", "5000"),
                ("message.timestamp.type", "LogAppendTime"),
                ("max.message.bytes", "50000"),
            ]),
            &broker,
        );
        assert_eq!(
            (t.retention_ms, t.log_append_time, t.max_message_bytes),
            (5000, true, 50_000)
        );
    }

    #[test]
    fn dynamic_broker_values_sit_between_overrides_and_static_defaults() {
        let broker = Config::default();
        let dynamic = map(&[("log.retention.ms", "9000"), ("message.max.bytes", "bad")]);
        let t = TopicConfig::resolve_with(&BTreeMap::new(), &broker, &dynamic);
        assert_eq!(t.retention_ms, 9000);
        // An unparsable dynamic value falls back to the static one.
        assert_eq!(t.max_message_bytes, broker.max_message_bytes);
        let own = TopicConfig::resolve_with(&map(&[("retention.ms", "5")]), &broker, &dynamic);
        assert_eq!(own.retention_ms, 5);
        assert_eq!(
            effective_value("retention.ms", &BTreeMap::new(), &broker, &dynamic),
            ("9000".to_string(), ValueSource::DynamicBroker)
        );
        assert_eq!(
            effective_value("segment.bytes", &BTreeMap::new(), &broker, &dynamic).1,
            ValueSource::StaticBroker
        );
    }

    #[test]
    fn compression_resolves_from_topic_then_broker() {
        let mut broker = Config::default();
        let d = TopicConfig::resolve(&BTreeMap::new(), &broker);
        assert_eq!(d.compression, CompressionType::Producer);
        assert_eq!(d.compression_levels, CompressionLevels::default());
        broker.compression_type = "lz4".into();
        broker.compression_zstd_level = 7;
        let b = TopicConfig::resolve(&BTreeMap::new(), &broker);
        assert_eq!(b.compression, CompressionType::Codec(Codec::Lz4));
        assert_eq!(b.compression_levels.zstd, 7);
        let t = TopicConfig::resolve(
            &map(&[
                ("compression.type", "uncompressed"),
                ("compression.gzip.level", "9"),
            ]),
            &broker,
        );
        assert_eq!(t.compression, CompressionType::Codec(Codec::None));
        assert_eq!(
            (t.compression_levels.gzip, t.compression_levels.lz4),
            (9, 9)
        );
    }

    #[test]
    fn compaction_settings_resolve() {
        let broker = Config::default();
        let d = TopicConfig::resolve(&BTreeMap::new(), &broker);
        assert!(d.cleanup_delete && !d.cleanup_compact);
        assert_eq!(
            (
                d.delete_retention_ms,
                d.min_compaction_lag_ms,
                d.max_compaction_lag_ms
            ),
            (86_400_000, 0, LONG_MAX)
        );
        assert_eq!(d.min_cleanable_dirty_ratio, 0.5);
        let both = TopicConfig::resolve(
            &map(&[
                ("cleanup.policy", "compact,delete"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("delete.retention.ms", "100"),
            ]),
            &broker,
        );
        assert!(both.cleanup_delete && both.cleanup_compact);
        assert_eq!(
            (both.min_cleanable_dirty_ratio, both.delete_retention_ms),
            (0.01, 100)
        );
        let compact = TopicConfig::resolve(&map(&[("cleanup.policy", "compact")]), &broker);
        assert!(compact.cleanup_compact && !compact.cleanup_delete);
    }

    #[test]
    fn incremental_ops_set_delete_append_subtract() {
        let cur = map(&[("retention.ms", "5000")]);
        let next = apply_ops(
            &cur,
            &[
                ConfigOp::Set("segment.ms".into(), "100".into()),
                ConfigOp::Delete("retention.ms".into()),
            ],
            false,
        )
        .unwrap();
        assert_eq!(next, map(&[("segment.ms", "100")]));
        let replaced = apply_ops(
            &cur,
            &[ConfigOp::Set("segment.ms".into(), "100".into())],
            true,
        )
        .unwrap();
        assert_eq!(replaced, map(&[("segment.ms", "100")]));
        let listed = apply_ops(
            &cur,
            &[ConfigOp::Append("cleanup.policy".into(), "delete".into())],
            false,
        )
        .unwrap();
        assert_eq!(listed.get("cleanup.policy").unwrap(), "delete");
        assert!(apply_ops(
            &cur,
            &[ConfigOp::Append("retention.ms".into(), "1".into())],
            false
        )
        .is_err());
        assert!(apply_ops(
            &cur,
            &[ConfigOp::Set("retention.ms".into(), "x".into())],
            false
        )
        .is_err());
    }
}
