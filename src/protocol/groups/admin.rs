//! ListGroups (16) v0-4, DescribeGroups (15) v0-5 and DeleteGroups (42)
//! v0-2: groups as Kafka's admin tools see them.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use crate::protocol::str_bytes;
use crate::shard::Shard;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;

use super::{on_coordinator, persist};
use crate::group::records::Key;

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
