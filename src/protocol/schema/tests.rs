use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::{ApiKey, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::walk::read_uvarint;
use super::*;
use crate::protocol::SUPPORTED_APIS;

/// The Metadata v1 request (26 bytes with its length prefix) whose topic
/// count of 0x7fffffff made the codec ask for 154 GB and abort.
const REPRO: &str = "000000160003000100000001000570726f62657fffffff000178";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A frame (without length prefix) with a header of `header_version`.
fn frame(key: i16, version: i16, header_version: i16, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("probe")))
        .encode(&mut out, header_version)
        .unwrap();
    out.put_slice(body);
    out.to_vec()
}

fn metadata(version: i16, topics: usize) -> Vec<u8> {
    let request = MetadataRequest::default().with_topics(Some(
        (0..topics)
            .map(|i| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(format!("t{i}")))))
            })
            .collect(),
    ));
    let mut body = BytesMut::new();
    request.encode(&mut body, version).unwrap();
    let hv = ApiKey::Metadata.request_header_version(version);
    frame(3, version, hv, &body)
}

#[test]
fn table_serves_exactly_the_supported_apis() {
    assert_eq!(requests().len(), SUPPORTED_APIS.len());
    for (key, min, max) in SUPPORTED_APIS {
        let m = request(*key as i16).unwrap_or_else(|| panic!("{key:?} missing"));
        assert_eq!(
            m.versions,
            Versions(*min, *max),
            "{key:?}: run scripts/gen-request-schema"
        );
    }
}

#[test]
fn flexible_versions_agree_with_the_codecs_header_versions() {
    for (key, min, max) in SUPPORTED_APIS {
        let m = request(*key as i16).unwrap();
        for v in *min..=*max {
            let expected = if m.flexible.contains(v) { 2 } else { 1 };
            assert_eq!(key.request_header_version(v), expected, "{key:?} v{v}");
        }
    }
}

/// Smallest wire size of a value of `ty` in `version`.
fn min_bytes(ty: Ty, version: i16, flexible: bool) -> usize {
    if let Some(n) = ty.fixed_bytes() {
        return n;
    }
    match ty {
        Ty::String => 2 - usize::from(flexible),
        Ty::Bytes | Ty::Records | Ty::Array(_) if flexible => 1,
        Ty::Bytes | Ty::Records | Ty::Array(_) => 4,
        Ty::Struct(fields) => {
            let own: usize = fields
                .iter()
                .filter(|f| f.tag.is_none() && f.versions.contains(version))
                .map(|f| min_bytes(f.ty, version, flexible && !f.never_flexible))
                .sum();
            own + usize::from(flexible)
        }
        _ => unreachable!(),
    }
}

fn array_elements(fields: &'static [Field], out: &mut Vec<(Ty, Versions)>) {
    for f in fields {
        let mut ty = f.ty;
        if let Ty::Array(elem) = ty {
            out.push((*elem, f.versions));
            ty = *elem;
        }
        if let Ty::Struct(inner) = ty {
            array_elements(inner, out);
        }
    }
}

/// The walk relies on it: with every element at least one byte on the wire,
/// Kafka's count rule bounds both the walk's work and the codec's vectors by
/// the frame's size. An element of zero bytes would let a few bytes of counts
/// ask for unbounded (nested: quadratic) vectors.
#[test]
fn every_array_element_takes_at_least_one_byte() {
    for m in requests().iter().chain([request_header()]) {
        let mut elements = Vec::new();
        array_elements(m.fields, &mut elements);
        for v in m.versions.0..=m.versions.1 {
            for (ty, versions) in elements.iter().filter(|(_, vs)| vs.contains(v)) {
                let min = min_bytes(*ty, v, m.flexible.contains(v));
                assert!(min >= 1, "API {} v{v}: {ty:?} in {versions:?}", m.api_key);
            }
        }
    }
}

#[test]
fn varints_longer_than_their_width_are_refused() {
    assert_eq!(read_uvarint(&[0x00], 5), Ok((0, 1)));
    assert_eq!(
        read_uvarint(&[0xff, 0xff, 0xff, 0xff, 0x0f], 5),
        Ok((u32::MAX as u64, 5))
    );
    // Bits beyond 32 in the fifth byte, a sixth byte, ten 0xff.
    assert!(read_uvarint(&[0xff, 0xff, 0xff, 0xff, 0x1f], 5).is_err());
    assert!(read_uvarint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 5).is_err());
    assert!(read_uvarint(&[0xff; 10], 5).is_err());
    let max64 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_eq!(read_uvarint(&max64, 10), Ok((u64::MAX, 10)));
    assert!(read_uvarint(&[0xff; 10], 10).is_err());
    assert!(read_uvarint(&[0xff; 11], 10).is_err());
    assert!(matches!(
        read_uvarint(&[0x80, 0x80], 5),
        Err(BoundsError::Truncated { .. })
    ));
}

#[test]
fn the_metadata_reproduction_is_refused_at_the_topic_count() {
    let frame = unhex(REPRO);
    assert_eq!(frame.len(), 4 + 22);
    // Without its 4-byte length prefix.
    let err = check_request(&frame[4..], 1).unwrap_err();
    assert_eq!(
        err,
        BoundsError::TooLarge {
            at: 15,
            value: 0x7fff_ffff,
            remaining: 3
        }
    );
}

#[test]
fn valid_metadata_requests_are_walked_to_their_end() {
    for v in 0..=12 {
        let f = metadata(v, 5);
        let hv = ApiKey::Metadata.request_header_version(v);
        assert_eq!(check_request(&f, hv), Ok(f.len()), "v{v}");
    }
}

#[test]
fn every_strict_prefix_of_a_valid_request_is_refused() {
    for v in [1, 9, 12] {
        let f = metadata(v, 3);
        let hv = ApiKey::Metadata.request_header_version(v);
        for len in 0..f.len() {
            assert!(check_request(&f[..len], hv).is_err(), "v{v} prefix {len}");
        }
    }
}

#[test]
fn huge_compact_counts_and_overlong_varints_are_refused() {
    // Metadata v12 body: topics (compact array), then two bools and tags.
    let huge = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0, 0];
    let f = frame(3, 12, 2, &huge);
    assert!(matches!(
        check_request(&f, 2),
        Err(BoundsError::TooLarge { .. })
    ));
    let overlong = [0xff; 10];
    let f = frame(3, 12, 2, &overlong);
    assert!(matches!(
        check_request(&f, 2),
        Err(BoundsError::BadVarint { .. })
    ));
    // A huge count of tagged fields in the header.
    let mut f = frame(3, 12, 1, &[]);
    f.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x07]);
    assert!(matches!(
        check_request(&f, 2),
        Err(BoundsError::TooLarge { .. })
    ));
}

#[test]
fn huge_and_negative_string_lengths_are_refused() {
    // Header v1 client id of 0x7fff bytes in a short frame.
    let mut f = vec![0, 3, 0, 1, 0, 0, 0, 1, 0x7f, 0xff];
    f.extend_from_slice(&[0; 8]);
    assert!(matches!(
        check_request(&f, 1),
        Err(BoundsError::TooLarge { .. })
    ));
    // A topic name of length -2 in Metadata v1.
    let body = [0, 0, 0, 1, 0xff, 0xfe];
    let f = frame(3, 1, 1, &body);
    assert!(matches!(
        check_request(&f, 1),
        Err(BoundsError::Negative { .. })
    ));
    // A null topic name where it is not nullable.
    let body = [0, 0, 0, 1, 0xff, 0xff];
    let f = frame(3, 1, 1, &body);
    assert!(matches!(
        check_request(&f, 1),
        Err(BoundsError::UnexpectedNull { .. })
    ));
}

#[test]
fn tagged_fields_are_walked_within_their_declared_size() {
    // Fetch v12 with a cluster id (tag 0) whose size disagrees with its value.
    let mut body = vec![];
    body.extend_from_slice(&0i32.to_be_bytes()); // replica id
    body.extend_from_slice(&[0; 4 + 4 + 4 + 1 + 4 + 4]); // wait, min, max, isolation, session
    body.extend_from_slice(&[1, 1, 1]); // no topics, no forgotten topics, empty rack
    let with_tags = |tags: &[u8]| {
        let mut b = body.clone();
        b.extend_from_slice(tags);
        frame(1, 12, 2, &b)
    };
    // tag 0, size 3, compact string "ab" (3 bytes): exact.
    let ok = with_tags(&[1, 0, 3, 3, b'a', b'b']);
    assert_eq!(check_request(&ok, 2), Ok(ok.len()));
    // tag 0, size 4 but the string takes 3.
    let bad = with_tags(&[1, 0, 4, 3, b'a', b'b', 0]);
    assert!(matches!(
        check_request(&bad, 2),
        Err(BoundsError::TaggedSize { tag: 0, .. })
    ));
    // tag 0, size 2 but the string claims 2 bytes after its length.
    let bad = with_tags(&[1, 0, 2, 3, b'a', b'b']);
    assert!(matches!(
        check_request(&bad, 2),
        Err(BoundsError::TooLarge { .. })
    ));
    // An unknown tag is skipped by its size, whatever it holds.
    let ok = with_tags(&[1, 9, 3, 0xff, 0xff, 0xff]);
    assert_eq!(check_request(&ok, 2), Ok(ok.len()));
}

#[test]
fn frames_of_apis_not_in_the_table_are_refused() {
    let f = frame(4, 0, 1, &[]);
    assert_eq!(
        check_request(&f, 1),
        Err(BoundsError::NotServed {
            api_key: 4,
            version: 0
        })
    );
    let f = frame(3, 13, 2, &[1, 1, 0, 0]);
    assert!(matches!(
        check_request(&f, 2),
        Err(BoundsError::NotServed { .. })
    ));
}

#[test]
fn decode_refuses_short_frames_and_the_reproduction_without_panicking() {
    use crate::protocol::{decode, ProtocolError};
    for len in 0..4 {
        let short = bytes::Bytes::from(vec![0u8; len]);
        assert!(matches!(decode(short), Err(ProtocolError::ShortFrame(n)) if n == len));
    }
    let repro = bytes::Bytes::from(unhex(REPRO)[4..].to_vec());
    assert!(matches!(
        decode(repro),
        Err(ProtocolError::OutOfBounds {
            api_key: ApiKey::Metadata,
            version: 1,
            ..
        })
    ));
    // An ApiVersions request of an unknown version: only the v1 header is
    // read, and its client id length is checked.
    let mut unknown = vec![0, 18, 0, 99, 0, 0, 0, 7, 0x7f, 0xff];
    unknown.extend_from_slice(b"abc");
    assert!(matches!(
        decode(bytes::Bytes::from(unknown)),
        Err(ProtocolError::OutOfBounds { .. })
    ));
    let ok = frame(18, 99, 1, &[0xff; 40]);
    let decoded = decode(bytes::Bytes::from(ok)).unwrap();
    assert!(decoded.request.is_none());
}
