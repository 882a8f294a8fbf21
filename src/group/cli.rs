//! `ringtail groups list` and `ringtail groups describe GROUP`: consumer
//! groups of any Kafka-compatible broker, with committed offset, log end
//! offset and lag per partition (like kafka-consumer-groups --describe);
//! `ringtail groups lag` (lag/cli.rs) evaluates their lag over time.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use bytes::Buf;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::client::Client;

#[derive(clap::Args, Debug)]
pub struct GroupsArgs {
    /// Broker to ask (`groups lag` takes a list: HOST:PORT,HOST:PORT).
    #[arg(
        long,
        alias = "bootstrap-server",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: GroupsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum GroupsCommand {
    /// List consumer groups with their state.
    List,
    /// Per partition: committed offset, log end offset, lag and owner.
    Describe { group: String },
    /// Burrow's lag evaluation (OK, WARN, ERR: STOP, STALL, REWIND) of every
    /// group or one, from a few samples of the cluster.
    Lag(crate::lag::cli::LagArgs),
}

pub fn run(args: GroupsArgs) -> Result<()> {
    let connect = || Client::connect(&args.bootstrap, "ringtail-groups");
    match args.command {
        GroupsCommand::List => list(&mut connect()?),
        GroupsCommand::Describe { group } => describe(&mut connect()?, &group),
        GroupsCommand::Lag(lag) => crate::lag::cli::run(&args.bootstrap, lag),
    }
}

fn list(client: &mut Client) -> Result<()> {
    let resp: ListGroupsResponse =
        client.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())?;
    if resp.error_code != 0 {
        bail!("ListGroups failed with error code {}", resp.error_code);
    }
    println!("{:<40} {:<22} PROTOCOL-TYPE", "GROUP", "STATE");
    for g in resp.groups {
        println!(
            "{:<40} {:<22} {}",
            g.group_id.0.as_str(),
            g.group_state.as_str(),
            g.protocol_type.as_str()
        );
    }
    Ok(())
}

/// One row of the describe table.
struct Row {
    committed: Option<i64>,
    log_end: Option<i64>,
    owner: Option<(String, String, String)>,
}

/// Topic partitions a consumer-protocol assignment names.
pub(crate) fn assigned_partitions(assignment: &[u8]) -> Vec<(String, i32)> {
    let mut b = assignment;
    let mut out = Vec::new();
    if b.remaining() < 6 {
        return out;
    }
    let _version = b.get_i16();
    let topics = b.get_i32().max(0);
    for _ in 0..topics {
        if b.remaining() < 2 {
            break;
        }
        let len = b.get_i16().max(0) as usize;
        if b.remaining() < len + 4 {
            break;
        }
        let topic = String::from_utf8_lossy(&b[..len]).into_owned();
        b.advance(len);
        let count = b.get_i32().max(0);
        for _ in 0..count {
            if b.remaining() < 4 {
                break;
            }
            out.push((topic.clone(), b.get_i32()));
        }
    }
    out
}

fn describe(client: &mut Client, group: &str) -> Result<()> {
    let gid = GroupId(StrBytes::from_string(group.to_string()));
    let described: DescribeGroupsResponse = client.call(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![gid.clone()]),
    )?;
    let info = described
        .groups
        .into_iter()
        .next()
        .context("no group in DescribeGroups answer")?;
    if info.error_code != 0 {
        bail!("DescribeGroups failed with error code {}", info.error_code);
    }
    let mut rows: BTreeMap<(String, i32), Row> = BTreeMap::new();
    for m in &info.members {
        for tp in assigned_partitions(&m.member_assignment) {
            rows.entry(tp)
                .or_insert(Row {
                    committed: None,
                    log_end: None,
                    owner: None,
                })
                .owner = Some((
                m.member_id.to_string(),
                m.client_host.to_string(),
                m.client_id.to_string(),
            ));
        }
    }
    let fetched: OffsetFetchResponse = client.call(
        ApiKey::OffsetFetch,
        7,
        &OffsetFetchRequest::default()
            .with_group_id(gid)
            .with_topics(None),
    )?;
    if fetched.error_code != 0 {
        bail!("OffsetFetch failed with error code {}", fetched.error_code);
    }
    for t in fetched.topics {
        for p in t.partitions {
            if p.committed_offset >= 0 {
                rows.entry((t.name.0.to_string(), p.partition_index))
                    .or_insert(Row {
                        committed: None,
                        log_end: None,
                        owner: None,
                    })
                    .committed = Some(p.committed_offset);
            }
        }
    }
    fill_log_end_offsets(client, &mut rows)?;
    println!(
        "Group {group} is {} ({} members)",
        info.group_state.as_str(),
        info.members.len()
    );
    println!(
        "{:<24} {:<24} {:>9} {:>14} {:>14} {:>8}  {:<40} {:<16} CLIENT-ID",
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST"
    );
    let dash = || "-".to_string();
    for ((topic, partition), row) in rows {
        let lag = match (row.committed, row.log_end) {
            (Some(c), Some(e)) => (e - c).max(0).to_string(),
            _ => dash(),
        };
        let (member, host, client_id) = row.owner.unwrap_or_else(|| (dash(), dash(), dash()));
        println!(
            "{:<24} {:<24} {:>9} {:>14} {:>14} {:>8}  {:<40} {:<16} {}",
            group,
            topic,
            partition,
            row.committed.map_or_else(dash, |c| c.to_string()),
            row.log_end.map_or_else(dash, |e| e.to_string()),
            lag,
            member,
            host,
            client_id
        );
    }
    Ok(())
}

fn fill_log_end_offsets(
    client: &mut Client,
    rows: &mut BTreeMap<(String, i32), Row>,
) -> Result<()> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in rows.keys() {
        by_topic.entry(t.as_str()).or_default().push(*p);
    }
    let topics = by_topic
        .iter()
        .map(|(t, ps)| {
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(t.to_string())))
                .with_partitions(
                    ps.iter()
                        .map(|p| {
                            list_offsets_request::ListOffsetsPartition::default()
                                .with_partition_index(*p)
                                .with_timestamp(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(topics);
    let resp: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 5, &req)?;
    for t in resp.topics {
        for p in t.partitions {
            if let Some(row) = rows.get_mut(&(t.name.0.to_string(), p.partition_index)) {
                if p.error_code == 0 {
                    row.log_end = Some(p.offset);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn consumer_assignment_is_parsed() {
        let mut b = bytes::BytesMut::new();
        b.put_i16(0);
        b.put_i32(1);
        b.put_i16(2);
        b.put_slice(b"ab");
        b.put_i32(2);
        b.put_i32(0);
        b.put_i32(3);
        b.put_i32(-1);
        assert_eq!(
            assigned_partitions(&b),
            vec![("ab".to_string(), 0), ("ab".to_string(), 3)]
        );
    }
}
