//! One sampling round of a Kafka-compatible cluster's consumer groups,
//! through the Kafka protocol only (so it works against any broker):
//! Metadata (brokers and partition leaders), ListGroups on every broker,
//! FindCoordinator for the groups, DescribeGroups (who owns which
//! partition) and OffsetFetch (committed offsets) on each coordinator,
//! ListOffsets (latest) on each partition leader. Blocking calls over one
//! connection per broker; runs on the lag monitor's own thread or in the
//! `groups lag` command, never on a shard.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use thiserror::Error;

use super::evaluator::{Observation, Owner};
use crate::client::{Client, ClientError};
use crate::config::LAG_SAMPLER_GROUPS_PER_REQUEST;
use crate::group::cli::assigned_partitions;

#[derive(Debug, Error)]
pub enum SamplerError {
    #[error("no broker of {0} answers")]
    NoBroker(String),
    #[error("broker {node}: {source}")]
    Client { node: i32, source: ClientError },
    #[error("{api:?} failed with error code {code}")]
    Kafka { api: ApiKey, code: i16 },
}

/// What one round saw.
#[derive(Debug, Default)]
pub struct Round {
    /// Every group the cluster listed (complete only when every broker
    /// answered ListGroups).
    pub listed: BTreeSet<String>,
    pub listing_complete: bool,
    /// Groups fully sampled this round, with their state; groups listed but
    /// missing here could not be sampled (their windows are left as they are).
    pub groups: Vec<SampledGroup>,
}

#[derive(Debug)]
pub struct SampledGroup {
    pub group: String,
    /// DescribeGroups' state ("Stable", "Empty", "Dead", ...).
    pub state: String,
    pub observations: Vec<Observation>,
}

type TopicPartition = (String, i32);

/// A client of one cluster: the bootstrap addresses and a connection per
/// broker, reopened on the next round after an error.
pub struct Sampler {
    bootstrap: Vec<String>,
    client_id: String,
    brokers: BTreeMap<i32, String>,
    connections: BTreeMap<i32, Client>,
    leaders: BTreeMap<TopicPartition, i32>,
}

/// Node id standing for the bootstrap connection before Metadata is known.
const BOOTSTRAP_NODE: i32 = -1;

impl Sampler {
    /// `bootstrap`: HOST:PORT[,HOST:PORT...].
    pub fn new(bootstrap: &str, client_id: &str) -> Sampler {
        Sampler {
            bootstrap: bootstrap.split(',').map(|s| s.trim().to_string()).collect(),
            client_id: client_id.to_string(),
            brokers: BTreeMap::new(),
            connections: BTreeMap::new(),
            leaders: BTreeMap::new(),
        }
    }

    /// Samples every group (or only `only_group`), at most `max_groups`.
    pub fn sample(
        &mut self,
        only_group: Option<&str>,
        max_groups: usize,
    ) -> Result<Round, SamplerError> {
        self.refresh_metadata()?;
        let mut round = Round::default();
        match only_group {
            Some(g) => {
                round.listed.insert(g.to_string());
                round.listing_complete = true;
            }
            None => self.list_groups(&mut round),
        }
        let groups: Vec<String> = round.listed.iter().take(max_groups).cloned().collect();
        let by_coordinator = self.find_coordinators(&groups)?;
        let mut partial = Vec::new();
        for (node, groups) in by_coordinator {
            for chunk in groups.chunks(LAG_SAMPLER_GROUPS_PER_REQUEST) {
                match self.sample_on_coordinator(node, chunk) {
                    Ok(sampled) => partial.extend(sampled),
                    Err(e) => tracing::debug!(node, error = %e, "lag: coordinator not sampled"),
                }
            }
        }
        let log_end = self.log_end_offsets(&partial);
        round.groups = partial
            .into_iter()
            .filter_map(|g| g.complete(&log_end))
            .collect();
        Ok(round)
    }

    fn call<Req, Resp>(
        &mut self,
        node: i32,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, SamplerError>
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable,
    {
        if !self.connections.contains_key(&node) {
            let addr = self.brokers.get(&node).cloned().ok_or_else(|| {
                SamplerError::NoBroker(format!("node {node} (not in the metadata)"))
            })?;
            let client = Client::connect(&addr, &self.client_id)
                .map_err(|source| SamplerError::Client { node, source })?;
            self.connections.insert(node, client);
        }
        let client = self.connections.get_mut(&node).expect("connected above");
        client.call(api, version, req).map_err(|source| {
            self.connections.remove(&node);
            SamplerError::Client { node, source }
        })
    }

    /// Metadata of every topic, from a broker already known or the
    /// bootstrap list.
    fn refresh_metadata(&mut self) -> Result<(), SamplerError> {
        let req = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        let mut nodes: Vec<i32> = self.brokers.keys().copied().collect();
        nodes.retain(|n| *n != BOOTSTRAP_NODE);
        let mut last = None;
        for node in nodes {
            match self.call::<_, MetadataResponse>(node, ApiKey::Metadata, 9, &req) {
                Ok(md) => {
                    self.take_metadata(md);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        for addr in self.bootstrap.clone() {
            self.connections.remove(&BOOTSTRAP_NODE);
            self.brokers.insert(BOOTSTRAP_NODE, addr);
            match self.call::<_, MetadataResponse>(BOOTSTRAP_NODE, ApiKey::Metadata, 9, &req) {
                Ok(md) => {
                    self.take_metadata(md);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| SamplerError::NoBroker(self.bootstrap.join(","))))
    }

    fn take_metadata(&mut self, md: MetadataResponse) {
        let brokers: BTreeMap<i32, String> = md
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        self.connections
            .retain(|n, _| *n == BOOTSTRAP_NODE || self.brokers.get(n) == brokers.get(n));
        self.connections.remove(&BOOTSTRAP_NODE);
        self.brokers = brokers;
        self.leaders.clear();
        for t in md.topics {
            let Some(name) = t.name else { continue };
            for p in t.partitions {
                if p.leader_id.0 >= 0 {
                    self.leaders
                        .insert((name.0.to_string(), p.partition_index), p.leader_id.0);
                }
            }
        }
    }

    /// ListGroups on every broker: each lists the groups it coordinates.
    fn list_groups(&mut self, round: &mut Round) {
        round.listing_complete = true;
        let nodes: Vec<i32> = self.brokers.keys().copied().collect();
        for node in nodes {
            let resp: Result<ListGroupsResponse, _> =
                self.call(node, ApiKey::ListGroups, 4, &ListGroupsRequest::default());
            match resp {
                Ok(r) if r.error_code == 0 => {
                    round
                        .listed
                        .extend(r.groups.into_iter().map(|g| g.group_id.0.to_string()));
                }
                Ok(r) => {
                    tracing::debug!(node, code = r.error_code, "lag: ListGroups failed");
                    round.listing_complete = false;
                }
                Err(e) => {
                    tracing::debug!(node, error = %e, "lag: ListGroups failed");
                    round.listing_complete = false;
                }
            }
        }
    }

    /// Each group's coordinator (FindCoordinator v4, batched); groups whose
    /// coordinator is unknown right now are left out of the round.
    fn find_coordinators(
        &mut self,
        groups: &[String],
    ) -> Result<BTreeMap<i32, Vec<String>>, SamplerError> {
        let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        let Some(&node) = self.brokers.keys().next() else {
            return Err(SamplerError::NoBroker(self.bootstrap.join(",")));
        };
        for chunk in groups.chunks(LAG_SAMPLER_GROUPS_PER_REQUEST) {
            let req = FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_coordinator_keys(chunk.iter().map(|g| str_bytes(g)).collect());
            let resp: FindCoordinatorResponse =
                self.call(node, ApiKey::FindCoordinator, 4, &req)?;
            for c in resp.coordinators {
                if c.error_code != 0 || c.node_id.0 < 0 {
                    continue;
                }
                self.brokers
                    .entry(c.node_id.0)
                    .or_insert_with(|| format!("{}:{}", c.host.as_str(), c.port));
                out.entry(c.node_id.0).or_default().push(c.key.to_string());
            }
        }
        Ok(out)
    }

    /// DescribeGroups and OffsetFetch (v8, batched) on one coordinator.
    fn sample_on_coordinator(
        &mut self,
        node: i32,
        groups: &[String],
    ) -> Result<Vec<PartialGroup>, SamplerError> {
        let ids: Vec<GroupId> = groups.iter().map(|g| GroupId(str_bytes(g))).collect();
        let described: DescribeGroupsResponse = self.call(
            node,
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default().with_groups(ids.clone()),
        )?;
        let mut partial: BTreeMap<String, PartialGroup> = BTreeMap::new();
        for d in described.groups {
            if d.error_code != 0 {
                continue;
            }
            let mut owners = BTreeMap::new();
            for m in &d.members {
                let owner = Owner {
                    client_host: m.client_host.to_string(),
                    client_id: m.client_id.to_string(),
                };
                for tp in assigned_partitions(&m.member_assignment) {
                    owners.insert(tp, owner.clone());
                }
            }
            let group = d.group_id.0.to_string();
            let state = d.group_state.to_string();
            partial.insert(group, PartialGroup::new(state, owners));
        }
        let req = OffsetFetchRequest::default().with_groups(
            ids.into_iter()
                .map(|g| {
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(g)
                        .with_topics(None)
                })
                .collect(),
        );
        let fetched: OffsetFetchResponse = self.call(node, ApiKey::OffsetFetch, 8, &req)?;
        for g in fetched.groups {
            let name = g.group_id.0.to_string();
            let Some(p) = partial.get_mut(&name) else {
                continue;
            };
            if g.error_code != 0 {
                partial.remove(&name);
                continue;
            }
            p.group = name;
            for t in g.topics {
                for part in t.partitions {
                    if part.error_code == 0 && part.committed_offset >= 0 {
                        let tp = (t.name.0.to_string(), part.partition_index);
                        p.committed.insert(tp, part.committed_offset);
                    }
                }
            }
        }
        Ok(partial
            .into_values()
            .filter(|p| !p.group.is_empty())
            .collect())
    }

    /// Latest offsets (ListOffsets v5, timestamp -1) of every committed
    /// partition, asked of each partition's leader; partitions whose leader
    /// did not answer are missing.
    fn log_end_offsets(&mut self, groups: &[PartialGroup]) -> BTreeMap<TopicPartition, i64> {
        let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        let wanted: BTreeSet<&TopicPartition> =
            groups.iter().flat_map(|g| g.committed.keys()).collect();
        for tp in wanted {
            if let Some(&leader) = self.leaders.get(tp) {
                let topics = by_leader.entry(leader).or_default();
                topics.entry(tp.0.clone()).or_default().push(tp.1);
            }
        }
        let mut out = BTreeMap::new();
        for (leader, topics) in by_leader {
            let req = list_offsets_request(topics);
            let resp: Result<ListOffsetsResponse, _> =
                self.call(leader, ApiKey::ListOffsets, 5, &req);
            let Ok(resp) = resp else { continue };
            for t in resp.topics {
                for p in t.partitions {
                    if p.error_code == 0 && p.offset >= 0 {
                        out.insert((t.name.0.to_string(), p.partition_index), p.offset);
                    }
                }
            }
        }
        out
    }
}

fn list_offsets_request(topics: BTreeMap<String, Vec<i32>>) -> ListOffsetsRequest {
    let topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|p| {
                            list_offsets_request::ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(topics)
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A group's committed offsets and owners, before the log end offsets.
struct PartialGroup {
    group: String,
    state: String,
    owners: BTreeMap<TopicPartition, Owner>,
    committed: BTreeMap<TopicPartition, i64>,
}

impl PartialGroup {
    fn new(state: String, owners: BTreeMap<TopicPartition, Owner>) -> PartialGroup {
        PartialGroup {
            group: String::new(),
            state,
            owners,
            committed: BTreeMap::new(),
        }
    }

    /// The group's observations; None when a committed partition's log end
    /// offset is unknown this round (its window is better left as it is
    /// than judged from a partial view).
    fn complete(self, log_end: &BTreeMap<TopicPartition, i64>) -> Option<SampledGroup> {
        let mut observations = Vec::with_capacity(self.committed.len());
        for (tp, committed) in &self.committed {
            let log_end_offset = *log_end.get(tp)?;
            observations.push(Observation {
                topic: tp.0.clone(),
                partition: tp.1,
                committed_offset: *committed,
                log_end_offset,
                owner: self.owners.get(tp).cloned(),
            });
        }
        Some(SampledGroup {
            group: self.group,
            state: self.state,
            observations,
        })
    }
}
