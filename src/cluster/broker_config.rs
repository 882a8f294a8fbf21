//! Dynamic broker configs: the broker-level synonyms of the topic configs
//! (`log.retention.ms`, `message.max.bytes`, `log.segment.bytes`...), set
//! live with `kafka-configs --alter --entity-type brokers` either for the
//! whole cluster (`--entity-default`, resource name "") or for one broker
//! (`--entity-name ID`). They are committed to the metadata log like topic
//! configs and become the defaults every topic without its own override
//! resolves to: topic override, then this broker's dynamic value, then the
//! cluster-wide dynamic default, then the static configuration file, then
//! Kafka's default (Kafka's order of config sources).
//!
//! Any other broker key (listeners, log.dirs, the flush policy...) is
//! static: refused with the reason, never accepted and ignored.
//!
//! Pure; used by the controller (validation of changes), by
//! DescribeConfigs (sources and synonyms) and by the shards when they
//! resolve a topic's [`TopicConfig`](super::topic_config::TopicConfig).

use std::collections::BTreeMap;

use super::records::NodeId;
use super::topic_config::{self, ConfigOp, KeySpec};

/// The dynamic broker overrides of one scope: the cluster default or one
/// broker.
pub type BrokerConfigs = BTreeMap<String, String>;

/// Where a dynamic broker config applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every broker (`--entity-default`, resource name "").
    ClusterDefault,
    Broker(NodeId),
}

impl Scope {
    /// The scope a BROKER resource name names: "" is the cluster default,
    /// otherwise a broker id.
    pub fn parse(resource_name: &str) -> Result<Scope, String> {
        if resource_name.is_empty() {
            return Ok(Scope::ClusterDefault);
        }
        match resource_name.parse::<NodeId>() {
            Ok(id) if id >= 0 => Ok(Scope::Broker(id)),
            _ => Err(format!(
                "broker resource name {resource_name:?} is neither a broker id nor empty (the cluster default)"
            )),
        }
    }

    /// The broker a metadata record names (`None`: the cluster default).
    pub fn broker(self) -> Option<NodeId> {
        match self {
            Scope::ClusterDefault => None,
            Scope::Broker(id) => Some(id),
        }
    }

    /// The resource name the metadata image keeps this scope's overrides
    /// under ("" for the cluster default, as Kafka names it).
    pub fn resource_name(self) -> String {
        self.broker().map_or(String::new(), |id| id.to_string())
    }
}

/// The topic config a dynamic broker key is the default of.
pub fn spec(broker_key: &str) -> Option<&'static KeySpec> {
    topic_config::KEYS
        .iter()
        .find(|k| k.broker_name == broker_key)
}

/// Checks one dynamic broker key and value with the rules of the topic
/// config it is the default of.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    let Some(spec) = spec(key) else {
        return Err(format!(
            "{key} is not a dynamic broker config in ringtail: set it in the broker's configuration file and restart (dynamic: {})",
            dynamic_keys().join(", ")
        ));
    };
    topic_config::validate(spec.name, value).map_err(|why| why.replacen(spec.name, key, 1))
}

/// Every dynamically changeable broker key, sorted.
pub fn dynamic_keys() -> Vec<&'static str> {
    let mut keys: Vec<_> = topic_config::KEYS.iter().map(|k| k.broker_name).collect();
    keys.sort_unstable();
    keys
}

/// Applies `ops` to one scope's overrides (`replace`: AlterConfigs),
/// checking every resulting value. Returns the new map.
pub fn apply_ops(
    current: &BrokerConfigs,
    ops: &[ConfigOp],
    replace: bool,
) -> Result<BrokerConfigs, String> {
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
                    validate(k, "")?;
                }
                next.remove(k);
            }
            ConfigOp::Append(k, _) | ConfigOp::Subtract(k, _) => {
                return Err(format!(
                    "{k}: APPEND and SUBTRACT apply to list configs; set the whole value instead"
                ));
            }
        }
    }
    next.iter().try_for_each(|(k, v)| validate(k, v))?;
    Ok(next)
}

/// The dynamic overrides in force on `node`, by broker key: its own over
/// the cluster default's.
pub fn effective(all: &BTreeMap<String, BrokerConfigs>, node: NodeId) -> BrokerConfigs {
    let mut out = all.get("").cloned().unwrap_or_default();
    if let Some(own) = all.get(&node.to_string()) {
        out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BrokerConfigs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_topic_synonyms_are_dynamic() {
        assert!(validate("log.retention.ms", "5000").is_ok());
        assert!(validate("message.max.bytes", "50000").is_ok());
        let err = validate("log.retention.ms", "-5").unwrap_err();
        assert!(err.starts_with("log.retention.ms=-5"), "{err}");
        assert!(validate("log.dirs", "/tmp")
            .unwrap_err()
            .contains("not a dynamic broker config"));
        assert!(validate("log.cleanup.policy", "delete").is_ok());
        assert!(dynamic_keys().contains(&"log.segment.bytes"));
    }

    #[test]
    fn scopes_parse_from_resource_names() {
        assert_eq!(Scope::parse(""), Ok(Scope::ClusterDefault));
        assert_eq!(Scope::parse("3"), Ok(Scope::Broker(3)));
        assert!(Scope::parse("x").is_err());
        assert!(Scope::parse("-1").is_err());
    }

    #[test]
    fn ops_set_delete_and_refuse_lists() {
        let cur = map(&[("log.retention.ms", "5000")]);
        let next = apply_ops(
            &cur,
            &[
                ConfigOp::Set("log.segment.bytes".into(), "1048576".into()),
                ConfigOp::Delete("log.retention.ms".into()),
            ],
            false,
        )
        .unwrap();
        assert_eq!(next, map(&[("log.segment.bytes", "1048576")]));
        assert!(apply_ops(
            &cur,
            &[ConfigOp::Set("listeners".into(), "x".into())],
            false
        )
        .is_err());
        assert!(apply_ops(
            &cur,
            &[ConfigOp::Append(
                "log.cleanup.policy".into(),
                "delete".into()
            )],
            false
        )
        .is_err());
        assert!(apply_ops(&cur, &[ConfigOp::Delete("log.dirs".into())], false).is_err());
    }

    #[test]
    fn own_overrides_win_over_the_cluster_default() {
        let mut all = BTreeMap::new();
        all.insert(
            String::new(),
            map(&[("log.retention.ms", "1000"), ("message.max.bytes", "9")]),
        );
        all.insert("2".to_string(), map(&[("log.retention.ms", "2000")]));
        let e = effective(&all, 2);
        assert_eq!(e.get("log.retention.ms").unwrap(), "2000");
        assert_eq!(e.get("message.max.bytes").unwrap(), "9");
        assert_eq!(effective(&all, 1).get("log.retention.ms").unwrap(), "1000");
    }
}
