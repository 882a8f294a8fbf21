//! The bounds walk: an interpreter over the request table that reads a frame
//! the way the codec will and refuses it at the first count, length or varint
//! that does not fit. No allocation, no recursion driven by the wire (depth
//! is the table's nesting), one pass over the frame's fields.

use thiserror::Error;

use super::{request, request_header, Field, Message, Ty};

/// Why a frame was refused; offsets are from the start of the frame (the
/// API key), after the length prefix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BoundsError {
    #[error("{need} bytes needed at byte {at} but the frame ends at byte {end}")]
    Truncated { at: usize, need: usize, end: usize },
    #[error("count or length {value} at byte {at} exceeds the {remaining} bytes left")]
    TooLarge {
        at: usize,
        value: u64,
        remaining: usize,
    },
    #[error("negative count or length {value} at byte {at}")]
    Negative { at: usize, value: i32 },
    #[error("null at byte {at} for a field that is not nullable")]
    UnexpectedNull { at: usize },
    #[error("varint at byte {at} is longer than {max_bytes} bytes or overflows")]
    BadVarint { at: usize, max_bytes: usize },
    #[error("tagged field {tag} at byte {at} declares {size} bytes but holds {used}")]
    TaggedSize {
        at: usize,
        tag: u32,
        size: usize,
        used: usize,
    },
    #[error("no request schema for API key {api_key} version {version}")]
    NotServed { api_key: i16, version: i16 },
}

type Result<T> = std::result::Result<T, BoundsError>;

/// Walks the request header of `header_version` (1 or 2) and the body of the
/// API and version the header names; returns the bytes walked. Bytes after
/// the body are left alone, as the codec leaves them.
pub fn check_request(frame: &[u8], header_version: i16) -> Result<usize> {
    let mut r = Reader::new(frame);
    walk_header(&mut r, header_version)?;
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let message = request(api_key)
        .filter(|m| m.versions.contains(version))
        .ok_or(BoundsError::NotServed { api_key, version })?;
    walk_message(&mut r, message, version)?;
    Ok(r.pos)
}

/// Walks only the request header (for an ApiVersions request of a version
/// the broker does not know, whose body is never decoded).
pub fn check_header(frame: &[u8], header_version: i16) -> Result<usize> {
    let mut r = Reader::new(frame);
    walk_header(&mut r, header_version)?;
    Ok(r.pos)
}

fn walk_header(r: &mut Reader<'_>, header_version: i16) -> Result<()> {
    let header = request_header();
    if !header.versions.contains(header_version) {
        return Err(BoundsError::NotServed {
            api_key: -1,
            version: header_version,
        });
    }
    walk_message(r, header, header_version)
}

fn walk_message(r: &mut Reader<'_>, message: &Message, version: i16) -> Result<()> {
    let cx = Cx {
        version,
        flexible: message.flexible.contains(version),
    };
    walk_struct(r, message.fields, cx)
}

/// The version being read and whether it is a flexible one.
#[derive(Clone, Copy)]
struct Cx {
    version: i16,
    flexible: bool,
}

fn walk_struct(r: &mut Reader<'_>, fields: &[Field], cx: Cx) -> Result<()> {
    // Runs of fixed-width fields are skipped in one step.
    let mut fixed = 0;
    for f in fields {
        if f.tag.is_some() || !f.versions.contains(cx.version) {
            continue;
        }
        if let Some(n) = f.ty.fixed_bytes() {
            fixed += n;
            continue;
        }
        r.skip(fixed)?;
        fixed = 0;
        let compact = cx.flexible && !f.never_flexible;
        walk_value(r, f.ty, f.nullable.contains(cx.version), compact, cx)?;
    }
    r.skip(fixed)?;
    if cx.flexible {
        walk_tagged_fields(r, fields, cx)?;
    }
    Ok(())
}

fn walk_value(r: &mut Reader<'_>, ty: Ty, nullable: bool, compact: bool, cx: Cx) -> Result<()> {
    if let Some(n) = ty.fixed_bytes() {
        return r.skip(n);
    }
    match ty {
        Ty::String | Ty::Bytes | Ty::Records => {
            let at = r.pos;
            let len = match (ty, compact) {
                (_, true) => r.compact_len()?,
                (Ty::String, false) => r.i16_len()?,
                (_, false) => r.i32_len()?,
            };
            match len {
                Some(len) => r.skip(len),
                None => null(nullable, at),
            }
        }
        Ty::Struct(fields) => walk_struct(r, fields, cx),
        Ty::Array(elem) => {
            let at = r.pos;
            let count = if compact {
                r.compact_len()?
            } else {
                r.i32_len()?
            };
            match count {
                Some(count) => walk_elements(r, *elem, count, compact, cx),
                None => null(nullable, at),
            }
        }
        _ => unreachable!("fixed-width types returned above"),
    }
}

/// The elements of an array. Every element is at least one byte on the wire
/// (a unit test checks the table), so each one walked moves forward; those
/// of a fixed width (scalars, structs of fixed-width fields) are skipped
/// together, but for the tagged fields each element of a flexible struct ends with.
fn walk_elements(r: &mut Reader<'_>, elem: Ty, count: usize, compact: bool, cx: Cx) -> Result<()> {
    let fixed = match elem {
        Ty::Struct(fields) => fixed_struct_bytes(fields, cx),
        ty => ty.fixed_bytes(),
    };
    match (fixed, elem) {
        (Some(n), Ty::Struct(fields)) if cx.flexible => (0..count).try_for_each(|_| {
            r.skip(n)?;
            walk_tagged_fields(r, fields, cx)
        }),
        // count <= remaining bytes, so the product cannot overflow.
        (Some(n), _) => r.skip(count * n),
        (None, _) => (0..count).try_for_each(|_| walk_value(r, elem, false, compact, cx)),
    }
}

/// Bytes of a struct's regular fields in this version if all are fixed-width.
fn fixed_struct_bytes(fields: &[Field], cx: Cx) -> Option<usize> {
    fields
        .iter()
        .filter(|f| f.tag.is_none() && f.versions.contains(cx.version))
        .map(|f| f.ty.fixed_bytes())
        .sum()
}

fn null(nullable: bool, at: usize) -> Result<()> {
    if nullable {
        Ok(())
    } else {
        Err(BoundsError::UnexpectedNull { at })
    }
}

/// The tagged-field section of a flexible struct: a count, then per field
/// its tag, its size and its bytes. A field this version knows is walked
/// within its declared size and must fill it exactly (the codec reads a
/// known field by its type, not by the size); others are skipped by size,
/// as the codec keeps them as raw bytes.
fn walk_tagged_fields(r: &mut Reader<'_>, fields: &[Field], cx: Cx) -> Result<()> {
    let at = r.pos;
    let count = r.uvarint32()? as usize;
    r.fits(at, count)?;
    for _ in 0..count {
        let at = r.pos;
        let tag = r.uvarint32()?;
        let size = r.uvarint32()? as usize;
        r.fits(at, size)?;
        let known = fields
            .iter()
            .find(|f| f.tag == Some(tag) && f.versions.contains(cx.version));
        let Some(f) = known else {
            r.skip(size)?;
            continue;
        };
        let mut inner = r.sub(size);
        walk_value(&mut inner, f.ty, f.nullable.contains(cx.version), true, cx)?;
        let used = inner.pos - r.pos;
        if used != size {
            return Err(BoundsError::TaggedSize {
                at,
                tag,
                size,
                used,
            });
        }
        r.skip(size)?;
    }
    Ok(())
}

/// A cursor over the frame, limited to `end` (a tagged field's bytes).
struct Reader<'a> {
    frame: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(frame: &'a [u8]) -> Reader<'a> {
        Reader {
            frame,
            pos: 0,
            end: frame.len(),
        }
    }

    /// A reader over the next `len` bytes (already checked to fit).
    fn sub(&self, len: usize) -> Reader<'a> {
        Reader {
            frame: self.frame,
            pos: self.pos,
            end: self.pos + len,
        }
    }

    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(BoundsError::Truncated {
                at: self.pos,
                need: n,
                end: self.end,
            });
        }
        let bytes = &self.frame[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    /// Kafka's rule: a count or length larger than the bytes left is malformed.
    fn fits(&self, at: usize, value: usize) -> Result<()> {
        if value > self.remaining() {
            return Err(BoundsError::TooLarge {
                at,
                value: value as u64,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    /// A length or count with -1 for null: None for null, else checked
    /// against the bytes left.
    fn i16_len(&mut self) -> Result<Option<usize>> {
        let at = self.pos;
        let b = self.take(2)?;
        self.signed_len(at, i16::from_be_bytes([b[0], b[1]]).into())
    }

    fn i32_len(&mut self) -> Result<Option<usize>> {
        let at = self.pos;
        let b = self.take(4)?;
        self.signed_len(at, i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn signed_len(&self, at: usize, value: i32) -> Result<Option<usize>> {
        match value {
            -1 => Ok(None),
            v if v < 0 => Err(BoundsError::Negative { at, value: v }),
            v => self.fits(at, v as usize).map(|_| Some(v as usize)),
        }
    }

    /// A compact length or count: an unsigned varint of length + 1, 0 for null.
    fn compact_len(&mut self) -> Result<Option<usize>> {
        let at = self.pos;
        match self.uvarint32()? {
            0 => Ok(None),
            n => {
                let len = (n - 1) as usize;
                self.fits(at, len).map(|_| Some(len))
            }
        }
    }

    fn uvarint32(&mut self) -> Result<u32> {
        self.uvarint(5).map(|v| v as u32)
    }

    /// An unsigned LEB128 varint of at most `max_bytes` (5 for 32 bits, 10
    /// for 64). Longer encodings, and final bytes carrying bits beyond the
    /// type's width, are malformed.
    fn uvarint(&mut self, max_bytes: usize) -> Result<u64> {
        let at = self.pos;
        let bits = if max_bytes == 5 { 32 } else { 64 };
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.take(1)?[0];
            let shift = 7 * i as u32;
            let payload = u64::from(b & 0x7f);
            if shift + 7 > bits && payload >> (bits - shift) != 0 {
                return Err(BoundsError::BadVarint { at, max_bytes });
            }
            value |= payload << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BoundsError::BadVarint { at, max_bytes })
    }
}

#[cfg(test)]
pub(super) fn read_uvarint(bytes: &[u8], max_bytes: usize) -> Result<(u64, usize)> {
    let mut r = Reader::new(bytes);
    let v = r.uvarint(max_bytes)?;
    Ok((v, r.pos))
}
