//! Request schemas and the bounds walk that every request frame passes before
//! the codec decodes it. Runs on the shard that read the frame, inside
//! `protocol::decode`; it holds no state and allocates nothing.
//!
//! Why: the codec (kafka-protocol) sizes its vectors with the counts it reads
//! from the wire (`Vec::with_capacity(count)`) before reading the elements,
//! so one 27-byte Metadata request with a topic count of 0x7fffffff asks for
//! 150 GB and aborts the process. The walk reads exactly the fields the codec
//! will read, checks every count and length against the bytes left in the
//! frame (Kafka's rule: a collection count larger than the remaining bytes is
//! malformed) and walks every element, so once it accepts a frame the codec
//! allocates at most a bounded multiple of the frame's size.
//!
//! The layout of each request comes from Apache Kafka's own JSON message
//! definitions: `scripts/gen-request-schema` turns them into `table.rs` (for
//! the APIs and versions in `SUPPORTED_APIS` only), and the walk interprets
//! that table. Record sets (`records` fields) are skipped by their length,
//! never walked: the partition validates batches.

#[rustfmt::skip]
mod table;
mod walk;

pub use walk::{check_header, check_request, BoundsError};

/// Newest version any schema field can name ("N+" in Kafka's schemas).
pub const MAX: i16 = i16::MAX;
/// An empty version range ("none" in Kafka's schemas).
pub const NONE: Versions = Versions(1, 0);

/// An inclusive range of versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions(pub i16, pub i16);

impl Versions {
    pub const fn contains(self, version: i16) -> bool {
        self.0 <= version && version <= self.1
    }
}

/// A field's wire type. Arrays are of scalars, strings or structs.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Int8,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    Float64,
    Bool,
    Uuid,
    String,
    Bytes,
    /// A record set: length-prefixed bytes like `Bytes`, left to the partition.
    Records,
    Struct(&'static [Field]),
    Array(&'static Ty),
}

impl Ty {
    /// Size of a fixed-width type; None for the length-prefixed ones.
    pub const fn fixed_bytes(self) -> Option<usize> {
        match self {
            Ty::Int8 | Ty::Bool => Some(1),
            Ty::Int16 | Ty::UInt16 => Some(2),
            Ty::Int32 | Ty::UInt32 => Some(4),
            Ty::Int64 | Ty::Float64 => Some(8),
            Ty::Uuid => Some(16),
            Ty::String | Ty::Bytes | Ty::Records | Ty::Struct(_) | Ty::Array(_) => None,
        }
    }
}

/// One field of a request struct, as Kafka's schema declares it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub ty: Ty,
    /// Versions in which the field is on the wire.
    pub versions: Versions,
    /// Versions in which the field may be null.
    pub nullable: Versions,
    /// Tag of a field sent in the tagged-field section (in all its versions).
    pub tag: Option<u32>,
    /// Keeps the non-compact encoding in flexible versions (the header's
    /// client id, which every broker must read whatever the version).
    pub never_flexible: bool,
}

impl Field {
    pub const fn new(ty: Ty, min: i16, max: i16) -> Field {
        Field {
            ty,
            versions: Versions(min, max),
            nullable: NONE,
            tag: None,
            never_flexible: false,
        }
    }

    pub const fn nullable(self, min: i16, max: i16) -> Field {
        Field {
            nullable: Versions(min, max),
            ..self
        }
    }

    pub const fn tagged(self, tag: u32) -> Field {
        Field {
            tag: Some(tag),
            ..self
        }
    }

    pub const fn never_flexible(self) -> Field {
        Field {
            never_flexible: true,
            ..self
        }
    }
}

/// A request (or the request header): the versions served and their layout.
#[derive(Debug, Clone, Copy)]
pub struct Message {
    /// -1 for the request header.
    pub api_key: i16,
    pub versions: Versions,
    /// Versions using compact lengths and tagged fields.
    pub flexible: Versions,
    pub fields: &'static [Field],
}

/// The request header's layout (versions 1 and 2).
pub fn request_header() -> &'static Message {
    &table::HEADER
}

/// The layout of one API's request, if the broker serves it.
pub fn request(api_key: i16) -> Option<&'static Message> {
    table::REQUESTS.iter().find(|m| m.api_key == api_key)
}

/// Every request layout in the table.
pub fn requests() -> &'static [Message] {
    table::REQUESTS
}

#[cfg(test)]
mod tests;
