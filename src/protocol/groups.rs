//! Group APIs: FindCoordinator (10) v0-4, JoinGroup (11) v0-9, SyncGroup
//! (14) v0-5, Heartbeat (12) v0-4, LeaveGroup (13) v0-5, OffsetCommit (8)
//! v2-8, OffsetFetch (9) v1-8, ListGroups (16) v0-4, DescribeGroups (15)
//! v0-5, DeleteGroups (42) v0-2, OffsetDelete (47) v0.
//!
//! The coordinator of a group is the leader of the group's
//! `__consumer_offsets` partition; each group request runs on the shard
//! owning that partition on this broker, which answers NOT_COORDINATOR when
//! it does not lead it and COORDINATOR_LOAD_IN_PROGRESS while it loads its
//! groups. Requests naming several groups are split per group and their
//! answers merged here.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::cluster::CONSUMER_OFFSETS_TOPIC;
use crate::group::coordinator::{now_ms, JoinOutcome, JoinRequest, JoinResult, SyncOutcome};
use crate::group::offsets_partition_for;
use crate::group::records::{subscribed_topics, GroupValue, Key, OffsetValue};
use crate::record::{readable_records, BatchHeader, BATCH_HEADER_BYTES};
use crate::shard::Shard;

/// Who sent a request: JoinGroup records it per member.
#[derive(Clone)]
pub struct Client {
    pub client_id: String,
    pub host: String,
}

fn partition_of(shard: &Shard, group: &str) -> i32 {
    offsets_partition_for(group, shard.config.offsets_topic_partitions)
}

/// Longest a group change waits for its records to reach the ISR of the
/// group's `__consumer_offsets` partition (Kafka's `offsets.commit.timeout.ms`).
pub const OFFSETS_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(5_000);

/// Whether this shard coordinates the groups of `__consumer_offsets`
/// partition `index`: it leads it and has loaded its groups.
fn coordinates(shard: &Shard, index: i32) -> Result<(), ResponseError> {
    match shard.partition(CONSUMER_OFFSETS_TOPIC, index) {
        Some(p) if p.is_leader() => {
            if shard.groups.loaded.borrow().contains(&index) {
                Ok(())
            } else {
                Err(ResponseError::CoordinatorLoadInProgress)
            }
        }
        _ => Err(ResponseError::NotCoordinator),
    }
}

/// Runs `f` on the coordinator shard of `group`.
async fn on_coordinator<T, F, Fut>(shard: &Rc<Shard>, group: &str, f: F) -> Result<T, ResponseError>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let index = partition_of(shard, group);
    let owner = shard.owner(CONSUMER_OFFSETS_TOPIC, index);
    shard
        .invoke_on(owner, move |s: Rc<Shard>| async move {
            coordinates(&s, index)?;
            Ok(f(s).await)
        })
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?
}

/// Appends records to the group's `__consumer_offsets` partition and waits
/// until they are durable. Runs on the coordinator shard.
async fn persist(
    shard: &Rc<Shard>,
    group: &str,
    records: Vec<(Bytes, Option<Bytes>)>,
) -> Result<(), ResponseError> {
    let index = partition_of(shard, group);
    let partition = shard
        .partition(CONSUMER_OFFSETS_TOPIC, index)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let ts = now_ms();
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: ts,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|_| ResponseError::UnknownServerError)?;
    let s = shard.clone();
    partition
        .produce(
            batch.freeze(),
            crate::partition::Acks::All,
            OFFSETS_COMMIT_TIMEOUT,
            move |p| s.mark_dirty(p),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::warn!(group, error = %e, "persisting group records");
            // Kafka's mapping for the group coordinator's appends.
            match e {
                crate::partition::PartitionError::NotLeaderOrFollower
                | crate::partition::PartitionError::Poisoned
                | crate::partition::PartitionError::Log(_) => ResponseError::NotCoordinator,
                _ => ResponseError::CoordinatorNotAvailable,
            }
        })
}

/// Rebuilds the groups stored in one `__consumer_offsets` partition this
/// shard now leads, reading its whole log. Records are read with the
/// bounded iteration of `record`; a batch that cannot be read (stored by an
/// older version) is skipped with a warning.
pub async fn load_partition_groups(
    shard: &Rc<Shard>,
    p: &Rc<crate::partition::Partition>,
) -> Result<(), String> {
    let now = Instant::now();
    let limit = shard.config.max_decompressed_batch_bytes;
    let mut offset = p.log_start_offset();
    let end = p.log_end_offset();
    while offset < end {
        let data = p
            .read_below(offset, 1 << 20, usize::MAX, end)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = data.records.to_bytes();
        let mut rest = &bytes[..];
        let before = offset;
        while let Ok(h) = BatchHeader::parse(rest) {
            let size = h.total_size().clamp(BATCH_HEADER_BYTES, rest.len());
            offset = offset.max(h.last_offset() + 1);
            for r in readable_records(&rest[..size], limit, true) {
                apply_record(shard, r, now);
            }
            rest = &rest[size..];
        }
        if offset <= before {
            break;
        }
    }
    shard.groups.loaded.borrow_mut().insert(p.index);
    tracing::debug!(partition = p.index, "consumer groups loaded");
    Ok(())
}

/// Applies one `__consumer_offsets` record to the shard's groups.
fn apply_record(shard: &Shard, r: crate::record::Record, now: Instant) {
    let Some(key) = r.key.as_deref().and_then(Key::decode) else {
        return;
    };
    match key {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            let v = r.value.as_deref().and_then(OffsetValue::decode);
            shard.groups.apply_offset(&group, &topic, partition, v);
        }
        Key::Group { group } => {
            let v = r.value.as_deref().and_then(GroupValue::decode);
            shard.groups.apply_group(&group, v, now);
        }
    }
}

/// Expires members and completes rebalances on this shard, forever.
pub fn start_group_timer(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            shard.groups.tick(Instant::now());
        }
    })
    .detach();
}

/// The broker leading the group's `__consumer_offsets` partition.
fn coordinator_of(shard: &Shard, group: &str) -> Result<(i32, String, i32), ResponseError> {
    let image = shard.image();
    let index = partition_of(shard, group);
    let p = image
        .partition(CONSUMER_OFFSETS_TOPIC, index)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let b = image
        .broker(p.leader)
        .filter(|b| !b.fenced)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    Ok((p.leader, b.registration.host.clone(), b.registration.port))
}

pub fn find_coordinator(
    shard: &Rc<Shard>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let answer = |key_type: i8, key: &str| {
        if key_type == 0 {
            coordinator_of(shard, key)
        } else {
            Err(ResponseError::CoordinatorNotAvailable)
        }
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let c = Coordinator::default().with_key(k.clone());
                match answer(req.key_type, k.as_str()) {
                    Ok((node, host, port)) => c
                        .with_node_id(BrokerId(node))
                        .with_host(str_bytes(&host))
                        .with_port(port),
                    Err(e) => c
                        .with_error_code(e.code())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match answer(req.key_type, req.key.as_str()) {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(node))
            .with_host(str_bytes(&host))
            .with_port(port),
        Err(e) => FindCoordinatorResponse::default()
            .with_error_code(e.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}

fn join_response(r: JoinResult, version: i16) -> JoinGroupResponse {
    let members = r
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let m = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(&id))
                .with_metadata(metadata);
            if version >= 5 {
                m.with_group_instance_id(instance.map(|i| str_bytes(&i)))
            } else {
                m
            }
        })
        .collect();
    let mut resp = JoinGroupResponse::default()
        .with_error_code(r.error.map_or(0, |e| e.code()))
        .with_generation_id(r.generation)
        .with_leader(str_bytes(&r.leader))
        .with_member_id(str_bytes(&r.member_id))
        .with_members(members);
    resp.protocol_name = Some(str_bytes(r.protocol.as_deref().unwrap_or("")));
    if version >= 7 {
        resp.protocol_type = r.protocol_type.map(|t| str_bytes(&t));
        resp.protocol_name = r.protocol.map(|p| str_bytes(&p));
    }
    resp
}

pub async fn join_group(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client: Client,
) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let result = on_coordinator(shard, &group, move |s| async move {
        let request = JoinRequest {
            group_id: req.group_id.0.to_string(),
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
            client_id: client.client_id,
            client_host: client.host,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: if version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        let member = request.member_id.clone();
        match s.groups.join(request, Instant::now()) {
            JoinOutcome::Now(r) => r,
            JoinOutcome::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| JoinResult::error(ResponseError::UnknownMemberId, &member)),
        }
    })
    .await;
    let r = result.unwrap_or_else(|e| JoinResult::error(e, ""));
    join_response(r, version)
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    let g = group.clone();
    let result = on_coordinator(shard, &group, move |s| async move {
        let assignments = req
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect();
        let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
        let outcome = s.groups.sync(
            &g,
            &req.member_id,
            req.generation_id,
            instance.as_deref(),
            assignments,
            Instant::now(),
        );
        let (assignment, protocol) = match outcome {
            SyncOutcome::Now(r) => (r, None),
            SyncOutcome::Wait(rx) => (
                rx.await.unwrap_or(Err(ResponseError::RebalanceInProgress)),
                None,
            ),
            SyncOutcome::Completed {
                value,
                waiters,
                leader,
            } => {
                let stored = persist(
                    &s,
                    &g,
                    vec![(
                        Key::Group { group: g.clone() }.encode(),
                        Some(value.encode()),
                    )],
                )
                .await;
                for (tx, a) in waiters {
                    let _ = tx.send(stored.map(|_| a));
                }
                (
                    leader
                        .await
                        .unwrap_or(Err(ResponseError::RebalanceInProgress)),
                    value.protocol,
                )
            }
        };
        let groups = s.groups.groups.borrow();
        let info = groups
            .get(&g)
            .map(|gr| (gr.protocol_type.clone(), gr.protocol.clone().or(protocol)));
        (assignment, info)
    })
    .await;
    let mut resp = SyncGroupResponse::default();
    match result {
        Ok((Ok(a), info)) => {
            resp.assignment = a;
            if version >= 5 {
                if let Some((t, p)) = info {
                    resp.protocol_type = t.map(|t| str_bytes(&t));
                    resp.protocol_name = p.map(|p| str_bytes(&p));
                }
            }
        }
        Ok((Err(e), _)) | Err(e) => resp.error_code = e.code(),
    }
    resp
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    req: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    let g = group.clone();
    let result = on_coordinator(shard, &group, move |s| async move {
        let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
        s.groups.heartbeat(
            &g,
            &req.member_id,
            req.generation_id,
            instance.as_deref(),
            Instant::now(),
        )
    })
    .await;
    HeartbeatResponse::default()
        .with_error_code(result.and_then(|r| r).err().map_or(0, |e| e.code()))
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    let g = group.clone();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let asked = members.clone();
    let result = on_coordinator(shard, &group, move |s| async move {
        s.groups.leave(&g, members, Instant::now())
    })
    .await;
    let mut resp = LeaveGroupResponse::default();
    match result.and_then(|r| r) {
        Err(e) => resp.error_code = e.code(),
        Ok(results) if version < 3 => resp.error_code = results[0].err().map_or(0, |e| e.code()),
        Ok(results) => {
            resp.members = asked
                .into_iter()
                .zip(results)
                .map(|((id, instance), r)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(&id))
                        .with_group_instance_id(instance.map(|i| str_bytes(&i)))
                        .with_error_code(r.err().map_or(0, |e| e.code()))
                })
                .collect()
        }
    }
    resp
}

/// One partition of an OffsetCommit: the record to write or the error.
type CommitPlan = (i32, Result<OffsetValue, ResponseError>);

pub async fn offset_commit(
    shard: &Rc<Shard>,
    req: OffsetCommitRequest,
    _version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let table = shard.image();
    // Per partition: Ok(record) to write, or the error to answer.
    let mut plan: Vec<(TopicName, Vec<CommitPlan>)> = Vec::new();
    for t in &req.topics {
        let known = table.topic(t.name.0.as_str()).map(|m| m.partition_count());
        let parts = t
            .partitions
            .iter()
            .map(|p| {
                let v = match known {
                    Some(n) if p.partition_index >= 0 && p.partition_index < n => Ok(OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                        commit_timestamp: now_ms(),
                    }),
                    _ => Err(ResponseError::UnknownTopicOrPartition),
                };
                (p.partition_index, v)
            })
            .collect();
        plan.push((t.name.clone(), parts));
    }
    let g = group.clone();
    let writes: Vec<(String, i32, OffsetValue)> = plan
        .iter()
        .flat_map(|(t, parts)| {
            parts
                .iter()
                .filter_map(|(p, v)| v.as_ref().ok().map(|v| (t.0.to_string(), *p, v.clone())))
        })
        .collect();
    let (member, generation) = (req.member_id.to_string(), req.generation_id_or_member_epoch);
    let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
    let outcome = on_coordinator(shard, &group, move |s| async move {
        s.groups
            .check_commit(&g, &member, generation, instance.as_deref())?;
        if writes.is_empty() {
            return Ok(());
        }
        let records = writes
            .iter()
            .map(|(t, p, v)| {
                (
                    Key::Offset {
                        group: g.clone(),
                        topic: t.clone(),
                        partition: *p,
                    }
                    .encode(),
                    Some(v.encode()),
                )
            })
            .collect();
        persist(&s, &g, records).await?;
        for (t, p, v) in writes {
            s.groups.apply_offset(&g, &t, p, Some(v));
        }
        Ok(())
    })
    .await
    .and_then(|r| r);
    let topics = plan
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, v)| {
                    let code = match (&v, &outcome) {
                        (Err(e), _) | (Ok(_), Err(e)) => e.code(),
                        _ => 0,
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// Committed offsets of one group: (topic, [(partition, offset, epoch, metadata)]).
type GroupOffsets = Vec<(String, Vec<(i32, i64, i32, String)>)>;

async fn fetch_group_offsets(
    shard: &Rc<Shard>,
    group: String,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Result<GroupOffsets, ResponseError> {
    let g = group.clone();
    on_coordinator(shard, &group, move |s| async move {
        let groups = s.groups.groups.borrow();
        let offsets = groups
            .get(&g)
            .map(|gr| gr.offsets.clone())
            .unwrap_or_default();
        let lookup = |t: &str, p: i32| {
            offsets
                .get(&(t.to_string(), p))
                .map(|o| (p, o.offset, o.leader_epoch, o.metadata.clone()))
                .unwrap_or((p, -1, -1, String::new()))
        };
        match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(t, ps)| {
                    let parts = ps.into_iter().map(|p| lookup(&t, p)).collect();
                    (t, parts)
                })
                .collect(),
            None => {
                let mut out: GroupOffsets = Vec::new();
                for ((t, p), o) in &offsets {
                    if out.last().is_none_or(|(lt, _)| lt != t) {
                        out.push((t.clone(), Vec::new()));
                    }
                    out.last_mut().expect("pushed").1.push((
                        *p,
                        o.offset,
                        o.leader_epoch,
                        o.metadata.clone(),
                    ));
                }
                out
            }
        }
    })
    .await
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::new();
        for g in req.groups {
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let result = fetch_group_offsets(shard, g.group_id.0.to_string(), wanted).await;
            let mut entry = OffsetFetchResponseGroup::default().with_group_id(g.group_id);
            match result {
                Ok(topics) => {
                    entry.topics = topics
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(str_bytes(&t)))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, o, e, m)| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(o)
                                                .with_committed_leader_epoch(e)
                                                .with_metadata(Some(str_bytes(&m)))
                                        })
                                        .collect(),
                                )
                        })
                        .collect()
                }
                Err(e) => entry.error_code = e.code(),
            }
            groups.push(entry);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let mut resp = OffsetFetchResponse::default();
    match fetch_group_offsets(shard, req.group_id.0.to_string(), wanted).await {
        Ok(topics) => {
            resp.topics = topics
                .into_iter()
                .map(|(t, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(str_bytes(&t)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, o, e, m)| {
                                    let r = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(o)
                                        .with_metadata(Some(str_bytes(&m)));
                                    if version >= 5 {
                                        r.with_committed_leader_epoch(e)
                                    } else {
                                        r
                                    }
                                })
                                .collect(),
                        )
                })
                .collect()
        }
        Err(e) if version >= 2 => resp.error_code = e.code(),
        Err(_) => {}
    }
    resp
}

pub async fn list_groups(
    shard: &Rc<Shard>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
    let mut all = Vec::new();
    for target in 0..shard.count {
        let states = states.clone();
        let listed = shard
            .invoke_on(target, move |s| async move {
                s.groups
                    .groups
                    .borrow()
                    .values()
                    .filter(|g| {
                        states.is_empty()
                            || states
                                .iter()
                                .any(|st| st.eq_ignore_ascii_case(g.state.name()))
                    })
                    .map(|g| {
                        (
                            g.id.clone(),
                            g.protocol_type.clone().unwrap_or_default(),
                            g.state.name().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        all.extend(listed);
    }
    all.sort();
    let groups = all
        .into_iter()
        .map(|(id, ptype, state)| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&ptype));
            if version >= 4 {
                g.with_group_state(str_bytes(&state))
            } else {
                g
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut out = Vec::new();
    for id in req.groups {
        let g = id.0.to_string();
        let described = on_coordinator(shard, &g.clone(), move |s| async move {
            let groups = s.groups.groups.borrow();
            groups.get(&g).map(|gr| {
                let members: Vec<_> = gr
                    .members
                    .values()
                    .map(|m| {
                        let metadata = gr.protocol.as_deref().map(|p| {
                            m.protocols
                                .iter()
                                .find(|(n, _)| n == p)
                                .map(|(_, md)| md.clone())
                                .unwrap_or_default()
                        });
                        (
                            m.id.clone(),
                            m.instance_id.clone(),
                            m.client_id.clone(),
                            m.client_host.clone(),
                            metadata.unwrap_or_default(),
                            m.assignment.clone(),
                        )
                    })
                    .collect();
                (
                    gr.state.name().to_string(),
                    gr.protocol_type.clone().unwrap_or_default(),
                    gr.protocol.clone().unwrap_or_default(),
                    members,
                )
            })
        })
        .await;
        let mut d = DescribedGroup::default().with_group_id(id);
        if version >= 3 {
            d.authorized_operations = i32::MIN;
        }
        match described {
            Ok(Some((state, ptype, protocol, members))) => {
                d.group_state = str_bytes(&state);
                d.protocol_type = str_bytes(&ptype);
                d.protocol_data = str_bytes(&protocol);
                d.members = members
                    .into_iter()
                    .map(|(mid, instance, client, host, metadata, assignment)| {
                        let m = DescribedGroupMember::default()
                            .with_member_id(str_bytes(&mid))
                            .with_client_id(str_bytes(&client))
                            .with_client_host(str_bytes(&host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment);
                        if version >= 4 {
                            m.with_group_instance_id(instance.map(|i| str_bytes(&i)))
                        } else {
                            m
                        }
                    })
                    .collect();
            }
            Ok(None) => d.group_state = str_bytes("Dead"),
            Err(e) => d.error_code = e.code(),
        }
        out.push(d);
    }
    DescribeGroupsResponse::default().with_groups(out)
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for id in req.groups_names {
        let g = id.0.to_string();
        let outcome = on_coordinator(shard, &g.clone(), move |s| async move {
            let keys = {
                let groups = s.groups.groups.borrow();
                let gr = groups.get(&g).ok_or(ResponseError::GroupIdNotFound)?;
                if !gr.is_empty() {
                    return Err(ResponseError::NonEmptyGroup);
                }
                let mut keys: Vec<Bytes> = gr
                    .offsets
                    .keys()
                    .map(|(t, p)| {
                        Key::Offset {
                            group: g.clone(),
                            topic: t.clone(),
                            partition: *p,
                        }
                        .encode()
                    })
                    .collect();
                keys.push(Key::Group { group: g.clone() }.encode());
                keys
            };
            persist(&s, &g, keys.into_iter().map(|k| (k, None)).collect()).await?;
            s.groups.forget(&g);
            Ok(())
        })
        .await
        .and_then(|r| r);
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(outcome.err().map_or(0, |e| e.code())),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(
    shard: &Rc<Shard>,
    req: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    let g = req.group_id.0.to_string();
    let asked: Vec<(String, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let request = asked.clone();
    let outcome = on_coordinator(shard, &g.clone(), move |s| async move {
        let (subscribed, present) = {
            let groups = s.groups.groups.borrow();
            let gr = groups.get(&g).ok_or(ResponseError::GroupIdNotFound)?;
            let subscribed: Vec<String> =
                if gr.is_empty() || gr.protocol_type.as_deref() != Some("consumer") {
                    Vec::new()
                } else {
                    gr.members
                        .values()
                        .flat_map(|m| {
                            m.protocols
                                .first()
                                .map(|(_, md)| subscribed_topics(md))
                                .unwrap_or_default()
                        })
                        .collect()
                };
            (subscribed, gr.offsets.keys().cloned().collect::<Vec<_>>())
        };
        let mut errors = Vec::new();
        let mut tombstones = Vec::new();
        for (t, parts) in &request {
            for p in parts {
                if subscribed.contains(t) {
                    errors.push(((t.clone(), *p), ResponseError::GroupSubscribedToTopic));
                } else if present.contains(&(t.clone(), *p)) {
                    tombstones.push((t.clone(), *p));
                }
            }
        }
        if !tombstones.is_empty() {
            let records = tombstones
                .iter()
                .map(|(t, p)| {
                    (
                        Key::Offset {
                            group: g.clone(),
                            topic: t.clone(),
                            partition: *p,
                        }
                        .encode(),
                        None,
                    )
                })
                .collect();
            persist(&s, &g, records).await?;
            for (t, p) in tombstones {
                s.groups.apply_offset(&g, &t, p, None);
            }
        }
        Ok(errors)
    })
    .await
    .and_then(|r| r);
    match outcome {
        Err(e) => OffsetDeleteResponse::default().with_error_code(e.code()),
        Ok(errors) => {
            let topics = asked
                .into_iter()
                .map(|(t, parts)| {
                    let partitions = parts
                        .into_iter()
                        .map(|p| {
                            let code = errors
                                .iter()
                                .find(|((et, ep), _)| *et == t && *ep == p)
                                .map_or(0, |(_, e)| e.code());
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code)
                        })
                        .collect();
                    OffsetDeleteResponseTopic::default()
                        .with_name(TopicName(str_bytes(&t)))
                        .with_partitions(partitions)
                })
                .collect();
            OffsetDeleteResponse::default().with_topics(topics)
        }
    }
}
