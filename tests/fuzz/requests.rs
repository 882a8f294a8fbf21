//! Request frames for the fuzz seeds and the property tests.
//!
//! `random_frame` writes a random request of any served API and version
//! from Kafka's schemas (the broker's table): several topics and
//! partitions, strings, nulls where allowed, known and unknown tagged
//! fields in flexible versions. `codec_encoded` then decodes it with the
//! kafka-protocol codec and encodes it again, and insists the codec writes
//! the very same bytes: so every seed is a request the codec itself
//! encodes, and a table that disagreed with the codec on any field would
//! fail here. `dense_frame` writes the worst case for allocation: one
//! array filled with the smallest elements the schema allows.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use ringtail::protocol::schema::{request_header, requests, Field, Message, Ty};

use super::rng::Rng;

/// Unknown tags are drawn from here, clear of the tags any served schema
/// knows (the codec writes unknown tags after its known ones).
const UNKNOWN_TAGS: [u32; 5] = [40, 41, 90, 127, 16_000];

/// How arrays, strings and tagged fields are filled.
#[derive(Clone, Copy)]
enum Shape {
    Random,
    /// `count` smallest elements in the array `target`, everything else as
    /// small as allowed; each element struct carries one empty unknown
    /// tagged field when `tag_each` (in flexible versions).
    Dense {
        target: *const Field,
        count: usize,
        tag_each: bool,
    },
}

struct Gen<'r> {
    rng: &'r mut Rng,
    shape: Shape,
    version: i16,
    flexible: bool,
}

/// Every served (API key, version) with its header version.
pub fn served() -> Vec<(&'static Message, i16, i16)> {
    let mut out = Vec::new();
    for m in requests() {
        for v in m.versions.0..=m.versions.1 {
            let header_version = if m.flexible.contains(v) { 2 } else { 1 };
            out.push((m, v, header_version));
        }
    }
    out
}

/// A random, valid request frame (without its length prefix).
pub fn random_frame(rng: &mut Rng, message: &Message, version: i16) -> Vec<u8> {
    let mut g = Gen {
        rng,
        shape: Shape::Random,
        version,
        flexible: message.flexible.contains(version),
    };
    g.frame(message)
}

/// The worst case for allocation through the array field `target`.
pub fn dense_frame(
    message: &Message,
    version: i16,
    target: &Field,
    count: usize,
    tag_each: bool,
) -> Vec<u8> {
    let mut rng = Rng::new(0);
    let mut g = Gen {
        rng: &mut rng,
        shape: Shape::Dense {
            target,
            count,
            tag_each,
        },
        version,
        flexible: message.flexible.contains(version),
    };
    g.frame(message)
}

/// Every array field of a request, nested ones included.
pub fn array_fields(fields: &'static [Field], out: &mut Vec<&'static Field>) {
    for f in fields {
        let mut ty = f.ty;
        if let Ty::Array(elem) = ty {
            out.push(f);
            ty = *elem;
        }
        if let Ty::Struct(inner) = ty {
            array_fields(inner, out);
        }
    }
}

/// Decodes `frame` with the codec and encodes it again; panics unless the
/// codec reads all of it and writes back the same bytes.
pub fn codec_encoded(frame: &[u8], header_version: i16) -> Vec<u8> {
    let mut buf = Bytes::copy_from_slice(frame);
    let header = RequestHeader::decode(&mut buf, header_version).expect("codec decodes header");
    let key = ApiKey::try_from(header.request_api_key).expect("served key");
    let version = header.request_api_version;
    let request = RequestKind::decode(key, &mut buf, version)
        .unwrap_or_else(|e| panic!("codec refuses {key:?} v{version}: {e}"));
    assert!(
        buf.is_empty(),
        "{key:?} v{version}: codec left {} bytes",
        buf.len()
    );
    let mut out = BytesMut::new();
    header.encode(&mut out, header_version).unwrap();
    request.encode(&mut out, version).unwrap();
    assert_eq!(
        hex(&out),
        hex(frame),
        "{key:?} v{version}: the codec encodes the request differently"
    );
    out.to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Whether `target` is `fields` or nested inside them.
fn contains(fields: &'static [Field], target: *const Field) -> bool {
    fields.iter().any(|f| {
        let ty = match f.ty {
            Ty::Array(elem) => *elem,
            ty => ty,
        };
        let nested = match ty {
            Ty::Struct(inner) => contains(inner, target),
            _ => false,
        };
        std::ptr::eq(f, target) || nested
    })
}

impl Gen<'_> {
    fn frame(&mut self, message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&message.api_key.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(self.rng.next_u64() as i32).to_be_bytes());
        // The header's client id: never compact, even in header v2.
        let client_id = request_header().fields[3];
        self.value(&mut out, &client_id, client_id.ty, true, false);
        if self.flexible {
            self.tagged_fields(&mut out, &[]);
        }
        self.fields(&mut out, message.fields);
        out
    }

    fn fields(&mut self, out: &mut Vec<u8>, fields: &'static [Field]) {
        for f in fields {
            if f.tag.is_none() && f.versions.contains(self.version) {
                let nullable = f.nullable.contains(self.version);
                self.value(out, f, f.ty, nullable, self.flexible && !f.never_flexible);
            }
        }
        if self.flexible {
            self.tagged_fields(out, fields);
        }
    }

    fn tagged_fields(&mut self, out: &mut Vec<u8>, fields: &'static [Field]) {
        let mut tagged: Vec<(u32, Vec<u8>)> = Vec::new();
        let random = matches!(self.shape, Shape::Random);
        for f in fields {
            let Some(tag) = f.tag else { continue };
            if random && f.versions.contains(self.version) && self.rng.one_in(2) {
                // Never null: the codec leaves a null (its default) out.
                let mut value = Vec::new();
                self.value(&mut value, f, f.ty, false, true);
                tagged.push((tag, value));
            }
        }
        match self.shape {
            Shape::Random => {
                for tag in UNKNOWN_TAGS {
                    if self.rng.one_in(4) {
                        let len = self.rng.below(6);
                        tagged.push((tag, self.rng.bytes(len)));
                    }
                }
            }
            Shape::Dense { tag_each: true, .. } => tagged.push((UNKNOWN_TAGS[0], Vec::new())),
            Shape::Dense { .. } => {}
        }
        put_uvarint(out, tagged.len() as u32);
        for (tag, value) in tagged {
            put_uvarint(out, tag);
            put_uvarint(out, value.len() as u32);
            out.extend_from_slice(&value);
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, field: &Field, ty: Ty, nullable: bool, compact: bool) {
        if let Some(n) = ty.fixed_bytes() {
            match ty {
                Ty::Bool => out.push(self.rng.below(2) as u8),
                _ => out.extend(self.rng.bytes(n)),
            }
            return;
        }
        match ty {
            Ty::String | Ty::Bytes | Ty::Records => {
                let random = matches!(self.shape, Shape::Random);
                if random && nullable && self.rng.one_in(6) {
                    return self.length(out, ty, compact, None);
                }
                let max = if matches!(ty, Ty::String) { 12 } else { 40 };
                let len = if random { self.rng.below(max + 1) } else { 0 };
                self.length(out, ty, compact, Some(len));
                for _ in 0..len {
                    out.push(b'a' + self.rng.below(26) as u8);
                }
            }
            Ty::Struct(fields) => self.fields(out, fields),
            Ty::Array(elem) => {
                let count = match self.shape {
                    Shape::Random if nullable && self.rng.one_in(6) => {
                        return self.length(out, ty, compact, None)
                    }
                    Shape::Random => self.rng.below(4),
                    Shape::Dense { target, count, .. } if std::ptr::eq(field, target) => count,
                    Shape::Dense { target, .. } => match elem {
                        Ty::Struct(inner) if contains(inner, target) => 1,
                        _ => 0,
                    },
                };
                self.length(out, ty, compact, Some(count));
                for _ in 0..count {
                    self.value(out, field, *elem, false, compact);
                }
            }
            _ => unreachable!(),
        }
    }

    /// A length or count prefix; None for null.
    fn length(&mut self, out: &mut Vec<u8>, ty: Ty, compact: bool, len: Option<usize>) {
        match (compact, ty) {
            (true, _) => put_uvarint(out, len.map_or(0, |l| l as u32 + 1)),
            (false, Ty::String) => {
                out.extend_from_slice(&len.map_or(-1, |l| l as i16).to_be_bytes())
            }
            (false, _) => out.extend_from_slice(&len.map_or(-1, |l| l as i32).to_be_bytes()),
        }
    }
}
