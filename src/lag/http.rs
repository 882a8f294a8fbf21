//! Burrow's HTTP endpoints for consumer lag, as plain functions from a GET
//! path to (status code, JSON body), for whichever HTTP listener mounts
//! them: `/v3/kafka/local/consumer` (the tracked groups),
//! `/v3/kafka/local/consumer/GROUP/lag` (every partition) and
//! `.../GROUP/status` (only the partitions not OK). An unknown group is a
//! 404 with status NOTFOUND, an unknown cluster or path under `/v3/kafka` a
//! 404 with Burrow's error body. No I/O; the caller passes the time.

use serde::Serialize;

use super::evaluator::{GroupStatus, LagEvaluator, Status};
use super::CLUSTER_NAME;

const PREFIX: &str = "/v3/kafka";

#[derive(Serialize)]
struct RequestInfo<'a> {
    url: &'a str,
    host: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: bool,
    message: &'a str,
    request: RequestInfo<'a>,
}

#[derive(Serialize)]
struct ConsumerList<'a> {
    error: bool,
    message: &'a str,
    consumers: Vec<&'a str>,
    request: RequestInfo<'a>,
}

#[derive(Serialize)]
struct ConsumerStatus<'a> {
    error: bool,
    message: &'a str,
    status: &'a GroupStatus,
    request: RequestInfo<'a>,
}

/// Burrow's answer for one path; None when the path is not under /v3/kafka.
pub fn http_get(
    evaluator: &LagEvaluator,
    path: &str,
    now_ms: i64,
    host: &str,
) -> Option<(u16, String)> {
    let url = path;
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let rest = path.strip_prefix(PREFIX)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let request = RequestInfo { url, host };
    let parts: Vec<&str> = rest
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let answer = match parts.as_slice() {
        [cluster, "consumer"] if *cluster == CLUSTER_NAME => {
            let body = ConsumerList {
                error: false,
                message: "consumer list returned",
                consumers: evaluator.groups().collect(),
                request,
            };
            (200, to_json(&body))
        }
        [cluster, "consumer", group, view @ ("lag" | "status")] if *cluster == CLUSTER_NAME => {
            let group = percent_decode(group);
            consumer_status(evaluator, &group, *view == "lag", now_ms, request)
        }
        [cluster, ..] if *cluster != CLUSTER_NAME => error(404, "cluster not found", request),
        _ => error(404, "request not found", request),
    };
    Some(answer)
}

fn consumer_status(
    evaluator: &LagEvaluator,
    group: &str,
    all_partitions: bool,
    now_ms: i64,
    request: RequestInfo,
) -> (u16, String) {
    let (code, status) = match evaluator.evaluate(CLUSTER_NAME, group, now_ms) {
        Some(mut s) => {
            if !all_partitions {
                s.partitions.retain(|p| p.status > Status::Ok);
            }
            (200, s)
        }
        None => (404, not_found(group)),
    };
    let body = ConsumerStatus {
        error: false,
        message: "consumer status returned",
        status: &status,
        request,
    };
    (code, to_json(&body))
}

/// Burrow's status of a group it does not know.
fn not_found(group: &str) -> GroupStatus {
    GroupStatus {
        cluster: CLUSTER_NAME.to_string(),
        group: group.to_string(),
        status: Status::NotFound,
        complete: 1.0,
        partitions: Vec::new(),
        partition_count: 0,
        maxlag: None,
        totallag: 0,
    }
}

fn error(code: u16, message: &str, request: RequestInfo) -> (u16, String) {
    let body = ErrorBody {
        error: true,
        message,
        request,
    };
    (code, to_json(&body))
}

fn to_json(body: &impl Serialize) -> String {
    serde_json::to_string(body)
        .unwrap_or_else(|e| format!("{{\"error\":true,\"message\":\"{e}\"}}"))
}

/// Decodes %XX escapes of a path segment (group ids may hold any
/// character); a malformed escape stays as it is.
pub fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LagConfig;
    use crate::lag::evaluator::Observation;

    fn evaluator() -> LagEvaluator {
        let mut ev = LagEvaluator::new(LagConfig {
            window_samples: 2,
            ..LagConfig::default()
        });
        for (t, (c, e)) in [(0, (5, 10)), (1_000, (6, 20))] {
            let obs = |p, committed, end| Observation {
                topic: "t".into(),
                partition: p,
                committed_offset: committed,
                log_end_offset: end,
                owner: None,
            };
            ev.observe_group("g 1", &[obs(0, c, e), obs(1, 3, 3)], t)
                .unwrap();
        }
        ev
    }

    fn get(path: &str) -> (u16, serde_json::Value) {
        let (code, body) = http_get(&evaluator(), path, 1_000, "node-1").unwrap();
        (code, serde_json::from_str(&body).unwrap())
    }

    #[test]
    fn consumer_list_is_burrows() {
        let (code, v) = get("/v3/kafka/local/consumer");
        assert_eq!(code, 200);
        assert_eq!(v["error"], false);
        assert_eq!(v["message"], "consumer list returned");
        assert_eq!(v["consumers"], serde_json::json!(["g 1"]));
        assert_eq!(v["request"]["url"], "/v3/kafka/local/consumer");
        assert_eq!(v["request"]["host"], "node-1");
        assert_eq!(get("/v3/kafka/local/consumer/").0, 200);
    }

    #[test]
    fn lag_has_every_partition_in_burrows_shape() {
        let (code, v) = get("/v3/kafka/local/consumer/g%201/lag?x=1");
        assert_eq!(code, 200);
        assert_eq!(v["message"], "consumer status returned");
        let s = &v["status"];
        assert_eq!(s["cluster"], "local");
        assert_eq!(s["group"], "g 1");
        assert_eq!(s["status"], "WARN");
        assert_eq!(s["complete"], 1.0);
        assert_eq!(s["partition_count"], 2);
        assert_eq!(s["totallag"], 14);
        let p0 = &s["partitions"][0];
        assert_eq!(p0["topic"], "t");
        assert_eq!(p0["partition"], 0);
        assert_eq!(p0["status"], "WARN");
        assert_eq!(
            p0["start"],
            serde_json::json!({"offset": 5, "timestamp": 0, "observedAt": 0, "lag": 5})
        );
        assert_eq!(p0["end"]["lag"], 14);
        assert_eq!(p0["current_lag"], 14);
        assert_eq!(s["maxlag"]["partition"], 0);
        assert_eq!(s["partitions"][1]["status"], "OK");
    }

    #[test]
    fn status_leaves_out_ok_partitions() {
        let (code, v) = get("/v3/kafka/local/consumer/g%201/status");
        assert_eq!(code, 200);
        assert_eq!(v["status"]["partitions"].as_array().unwrap().len(), 1);
        assert_eq!(v["status"]["partition_count"], 2);
    }

    #[test]
    fn unknown_group_cluster_and_paths() {
        let (code, v) = get("/v3/kafka/local/consumer/nope/lag");
        assert_eq!(code, 404);
        assert_eq!(v["status"]["status"], "NOTFOUND");
        assert_eq!(v["status"]["group"], "nope");
        let (code, v) = get("/v3/kafka/other/consumer");
        assert_eq!((code, v["error"].clone()), (404, serde_json::json!(true)));
        assert_eq!(v["message"], "cluster not found");
        assert_eq!(get("/v3/kafka/local/consumer/g/offsets").0, 404);
        let ev = evaluator();
        assert!(http_get(&ev, "/metrics", 0, "h").is_none());
        assert!(http_get(&ev, "/v3/kafkaesque", 0, "h").is_none());
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
