//! OffsetCommit (8) v2-8, OffsetFetch (9) v1-8 and OffsetDelete (47) v0:
//! a group's committed offsets, stored in `__consumer_offsets` before they
//! are answered.

use std::rc::Rc;

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use crate::protocol::str_bytes;
use crate::shard::Shard;
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

use super::{on_coordinator, persist};
use crate::group::coordinator::now_ms;
use crate::group::records::{subscribed_topics, Key, OffsetValue};

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
