//! Request decoding under hostile input: the bounds walk and then the codec
//! (`protocol::decode`, as a connection runs it) fuzzed with mutants of
//! valid requests of every served API and version, and property tests of
//! the walk. The harness is in tests/fuzz/; `RINGTAIL_FUZZ_SECONDS=600
//! cargo test --release --test fuzz_requests` runs a long session.

mod fuzz;

use bytes::Bytes;
use proptest::prelude::*;
use ringtail::protocol::schema::{check_request, Message};

use fuzz::requests::{array_fields, codec_encoded, dense_frame, random_frame, served};
use fuzz::rng::Rng;
use fuzz::{alloc, typed, Target};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// K: bytes the codec may hold at its peak per byte of request frame.
///
/// Once the walk has accepted a frame, every value the codec allocates
/// stands on bytes of its own in the frame: each array element on at least
/// its smallest wire size (its fixed fields, length prefixes and, in
/// flexible versions, its tagged-field count), each unknown tagged field on
/// its tag and size (two bytes or more); strings, bytes and records are
/// views into the frame, not copies. So the peak is at most the largest
/// ratio of memory to those bytes, times the frame. In kafka-protocol 0.18
/// the worst element is a `MetadataRequestTopic` of Metadata v9 (72 bytes
/// in memory, 2 on the wire: an empty compact name and no tags): 36; with
/// one unknown tagged field each, the element also gets its own BTreeMap
/// leaf (408 bytes) for 2 more wire bytes: (72 + 408) / 4 = 120. Larger
/// structs take more wire bytes (`LeaveGroup` members: 120 bytes for 3).
/// `densest_frames_stay_within_k` measures these worst cases for every
/// array of every served request and checks this reasoning.
const ALLOC_PER_FRAME_BYTE: usize = 128;
/// Fixed costs of one decode whatever the frame: the top-level request's
/// and header's tag maps, the frame buffer's shared handle, the codec's
/// error (with the backtrace anyhow captures when RUST_BACKTRACE is set:
/// about 2 KiB measured, the largest of these).
const ALLOC_FIXED_BYTES: usize = 16 * 1024;

fn alloc_bound(len: usize) -> usize {
    ALLOC_PER_FRAME_BYTE * len + ALLOC_FIXED_BYTES
}

fn header_version(m: &Message, version: i16) -> i16 {
    if m.flexible.contains(version) {
        2
    } else {
        1
    }
}

struct Requests;

impl Target for Requests {
    fn name(&self) -> &'static str {
        "requests"
    }

    fn seeds(&self, rng: &mut Rng) -> Vec<Vec<u8>> {
        let mut seeds = Vec::new();
        for (m, v, hv) in served() {
            for _ in 0..2 {
                seeds.push(codec_encoded(&random_frame(rng, m, v), hv));
            }
        }
        let batch = typed::batch(3, 40);
        for v in 3..=12 {
            seeds.push(typed::produce(v, 2, 3, &batch));
        }
        for v in 4..=16 {
            seeds.push(typed::fetch(v, 2, 3));
        }
        seeds
    }

    fn run(&self, input: Bytes) -> bool {
        ringtail::protocol::decode(input).is_ok()
    }

    fn alloc_bound(&self, len: usize) -> usize {
        alloc_bound(len)
    }
}

#[test]
fn fuzz_request_decoding() {
    let report = fuzz::fuzz(&Requests);
    assert!(report.cases > 1000, "too few cases ran: {report:?}");
    assert!(report.accepted > 0, "no mutant was accepted: {report:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The walk accepts every request the codec encodes, of every served
    /// API and version, and walks exactly to its end.
    #[test]
    fn walk_consumes_exactly_every_codec_encoded_request(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        for (m, v, hv) in served() {
            let frame = codec_encoded(&random_frame(&mut rng, m, v), hv);
            prop_assert_eq!(check_request(&frame, hv), Ok(frame.len()), "API {} v{}", m.api_key, v);
            prop_assert!(ringtail::protocol::decode(Bytes::from(frame)).is_ok());
        }
    }
}

#[test]
fn walk_consumes_exactly_typed_produce_and_fetch_requests() {
    let batch = typed::batch(10, 100);
    for v in 3..=12 {
        let frame = typed::produce(v, 3, 8, &batch);
        let hv = if v >= 9 { 2 } else { 1 };
        assert_eq!(check_request(&frame, hv), Ok(frame.len()), "Produce v{v}");
    }
    for v in 4..=16 {
        let frame = typed::fetch(v, 3, 8);
        let hv = if v >= 12 { 2 } else { 1 };
        assert_eq!(check_request(&frame, hv), Ok(frame.len()), "Fetch v{v}");
    }
}

/// Every array of every served request filled with its smallest elements
/// (with and without an unknown tagged field on each): the densest frames
/// for allocation. Each must be accepted and decoded within K per byte.
#[test]
fn densest_frames_stay_within_k() {
    const ELEMENTS: usize = 2000;
    let mut worst = (0.0f64, String::new());
    for (m, v, hv) in served() {
        let mut arrays = Vec::new();
        array_fields(m.fields, &mut arrays);
        for field in arrays.into_iter().filter(|f| f.versions.contains(v)) {
            for tag_each in [false, true] {
                let frame = dense_frame(m, v, field, ELEMENTS, tag_each);
                assert_eq!(check_request(&frame, hv), Ok(frame.len()));
                let len = frame.len();
                let (decoded, peak) = alloc::peak_during("dense", 0, || {
                    ringtail::protocol::decode(Bytes::from(frame)).is_ok()
                });
                assert!(decoded, "API {} v{v}: dense frame refused", m.api_key);
                let ratio = peak as f64 / len as f64;
                assert!(
                    peak <= alloc_bound(len),
                    "API {} v{v} {:?} tags {tag_each}: {peak} bytes for {len}",
                    m.api_key,
                    field.ty
                );
                if ratio > worst.0 {
                    worst = (ratio, format!("API {} v{v} tags {tag_each}", m.api_key));
                }
            }
        }
    }
    println!(
        "densest frame: {:.1} bytes per frame byte ({})",
        worst.0, worst.1
    );
    // K is meant to be close to the worst case, not a loose guess.
    assert!(
        worst.0 > ALLOC_PER_FRAME_BYTE as f64 / 2.0,
        "K is loose: {worst:?}"
    );
}

fn metadata_v1_with_topic_count(count: i32) -> Vec<u8> {
    let mut frame = vec![0, 3, 0, 1, 0, 0, 0, 1, 0, 5];
    frame.extend_from_slice(b"probe");
    frame.extend_from_slice(&count.to_be_bytes());
    frame.extend_from_slice(&[0, 1, b'x']);
    frame
}

/// The measurement can fail: the codec alone, on a 25-byte frame claiming
/// 100,000 topics, allocates far beyond the bound; the walk refuses it.
#[test]
fn the_allocation_bound_catches_the_codec_on_its_own() {
    use kafka_protocol::messages::metadata_request::MetadataRequest;
    use kafka_protocol::protocol::Decodable;
    let frame = metadata_v1_with_topic_count(100_000);
    let len = frame.len();
    let body = Bytes::from(frame[15..].to_vec());
    let (_, peak) = alloc::peak_during("codec alone", 0, || {
        MetadataRequest::decode(&mut body.clone(), 1).is_ok()
    });
    assert!(peak > alloc_bound(len), "peak {peak}");
    let (decoded, peak) = alloc::peak_during("walk", 0, || {
        ringtail::protocol::decode(Bytes::from(frame)).is_ok()
    });
    assert!(!decoded);
    assert!(peak <= alloc_bound(len), "peak {peak}");
}

#[test]
fn the_metadata_reproduction_is_refused() {
    let frame = metadata_v1_with_topic_count(0x7fff_ffff);
    assert_eq!(frame.len(), 22);
    let (decoded, peak) = alloc::peak_during("repro", 0, || {
        ringtail::protocol::decode(Bytes::from(frame)).is_ok()
    });
    assert!(!decoded);
    assert!(peak <= alloc_bound(22), "peak {peak}");
}

#[test]
fn header_versions_follow_the_table() {
    for (m, v, hv) in served() {
        assert_eq!(header_version(m, v), hv);
    }
}
