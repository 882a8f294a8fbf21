//! JoinGroup (11) v0-9, SyncGroup (14) v0-5, Heartbeat (12) v0-4 and
//! LeaveGroup (13) v0-5: membership of a classic group, run on its
//! coordinator shard against `group::GroupCoordinator`.

use std::rc::Rc;
use std::time::Instant;

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use crate::protocol::str_bytes;
use crate::shard::Shard;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;

use super::{on_coordinator, store_group, Client};
use crate::group::coordinator::{JoinOutcome, JoinRequest, JoinResult, SyncOutcome};

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
                let protocol = value.protocol.clone();
                let stored = store_group(&s, &g, value).await;
                for (tx, a) in waiters {
                    let _ = tx.send(stored.map(|_| a));
                }
                (
                    leader
                        .await
                        .unwrap_or(Err(ResponseError::RebalanceInProgress)),
                    protocol,
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
        let outcome = s.groups.leave(&g, members, Instant::now())?;
        if let Some(value) = outcome.store {
            // The last member left: store the Empty group before answering,
            // so a restart right after finds it Empty. The member is gone
            // either way; a failed store is logged by `store_group`.
            let _ = store_group(&s, &g, value).await;
        }
        Ok(outcome.results)
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
