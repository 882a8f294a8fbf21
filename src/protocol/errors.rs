//! Error codes of responses, counted for the metrics as Kafka's
//! `ErrorsPerSec` counts them: once per partition, topic, group or
//! response-level error the response carries (NONE not counted).
//!
//! Runs on the connection's shard once a response is built; bumps that
//! shard's counters (`crate::metrics`).

use kafka_protocol::messages::{ApiKey, ResponseKind};

/// Counts every non-zero error code in `response`.
pub fn count(api_key: ApiKey, response: &ResponseKind) {
    let key = api_key as i16;
    for_each_code(response, &mut |code| {
        crate::metrics::request_error(key, code)
    });
}

/// Calls `f` with each error code `response` carries.
fn for_each_code(response: &ResponseKind, f: &mut dyn FnMut(i16)) {
    use ResponseKind as R;
    match response {
        R::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| f(p.error_code)),
        R::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        R::Metadata(r) => r.topics.iter().for_each(|t| {
            f(t.error_code);
            t.partitions.iter().for_each(|p| f(p.error_code));
        }),
        R::CreateTopics(r) => r.topics.iter().for_each(|t| f(t.error_code)),
        R::DeleteTopics(r) => r.responses.iter().for_each(|t| f(t.error_code)),
        R::CreatePartitions(r) => r.results.iter().for_each(|t| f(t.error_code)),
        R::DescribeConfigs(r) => r.results.iter().for_each(|t| f(t.error_code)),
        R::AlterConfigs(r) => r.responses.iter().for_each(|t| f(t.error_code)),
        R::IncrementalAlterConfigs(r) => r.responses.iter().for_each(|t| f(t.error_code)),
        R::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        R::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        R::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code)),
        R::OffsetFetch(r) => {
            f(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| f(p.error_code));
            r.groups.iter().for_each(|g| {
                f(g.error_code);
                g.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .for_each(|p| f(p.error_code));
            });
        }
        R::OffsetDelete(r) => {
            f(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| f(p.error_code));
        }
        R::FindCoordinator(r) => {
            f(r.error_code);
            r.coordinators.iter().for_each(|c| f(c.error_code));
        }
        R::DescribeGroups(r) => r.groups.iter().for_each(|g| f(g.error_code)),
        R::DeleteGroups(r) => r.results.iter().for_each(|g| f(g.error_code)),
        R::ElectLeaders(r) => {
            f(r.error_code);
            r.replica_election_results
                .iter()
                .flat_map(|t| &t.partition_result)
                .for_each(|p| f(p.error_code));
        }
        R::DescribeLogDirs(r) => {
            f(r.error_code);
            r.results.iter().for_each(|d| f(d.error_code));
        }
        R::ApiVersions(r) => f(r.error_code),
        R::JoinGroup(r) => f(r.error_code),
        R::SyncGroup(r) => f(r.error_code),
        R::Heartbeat(r) => f(r.error_code),
        R::LeaveGroup(r) => f(r.error_code),
        R::ListGroups(r) => f(r.error_code),
        R::InitProducerId(r) => f(r.error_code),
        R::DescribeCluster(r) => f(r.error_code),
        R::DescribeQuorum(r) => f(r.error_code),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
    };

    #[test]
    fn every_partition_error_is_counted_and_none_is_not() {
        let partitions =
            [0, 6, 6, 3].map(|code| PartitionProduceResponse::default().with_error_code(code));
        let r = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_partition_responses(partitions.to_vec()),
        ]));
        let mut seen = Vec::new();
        for_each_code(&r, &mut |c| seen.push(c));
        assert_eq!(seen, vec![0, 6, 6, 3]);
        count(ApiKey::Produce, &r);
        let errors = crate::metrics::snapshot().errors;
        assert_eq!(errors, vec![(0, 3, 1), (0, 6, 2)]);
    }
}
