//! A check of Avro binary against its schema, run before the generic decoder sees foreign bytes.
//!
//! apache-avro trusts the lengths it reads: a string length is allocated before the bytes are read, and a
//! collection count reserves `count × size_of::<Value>()` up front. Thirty bytes claiming a map of 500
//! million entries make it ask for 86 GB and abort the process. This walk reads every length and count
//! and refuses any that claims more than the bytes left (each string byte, array item and map entry takes at
//! least one byte), any nesting deeper than [`MAX_DEPTH`] and any trailing byte, allocating nothing. After it,
//! the decoder's allocations are bounded by a small multiple of the input's size.

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordSchema, Schema};

/// Named types a schema refers to by name (`Schema::Ref`), by full name.
pub type Names = HashMap<Name, Schema>;

/// Deeper nesting is refused (hookrelay's schemas nest two levels; recursion through named types could
/// otherwise exhaust the stack).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Avro: {0}")]
pub struct Malformed(pub &'static str);

/// Checks that `body` is one datum of `schema`, every length and count within the bytes present and no
/// byte left over. A record written with an older version of `schema` — one that lacked some of its
/// trailing optional fields (schemas here only grow that way) — is accepted too: returns how many trailing
/// fields are missing, each to be read as null (a single `0` byte, the union's null branch).
pub fn missing_trailing_fields(schema: &Schema, body: &[u8]) -> Result<usize, Malformed> {
    let mut r = Cursor::new(body);
    let missing = match schema {
        Schema::Record(RecordSchema { fields, .. }) => {
            let mut missing = 0;
            for (i, f) in fields.iter().enumerate() {
                if r.left() == 0 && i > 0 && fields[i..].iter().all(|f| is_optional(&f.schema)) {
                    missing = fields.len() - i;
                    break;
                }
                walk(&f.schema, &mut r, 1, &Names::new())?;
            }
            missing
        }
        other => {
            walk(other, &mut r, 0, &Names::new())?;
            0
        }
    };
    if r.pos != body.len() {
        return Err(Malformed("trailing bytes after the record"));
    }
    Ok(missing)
}

/// Checks that `body` is exactly one datum of a foreign writer's `schema` (its named types in `names`),
/// every length and count within the bytes present and no byte left over.
pub fn check_datum(schema: &Schema, names: &Names, body: &[u8]) -> Result<(), Malformed> {
    let mut r = Cursor::new(body);
    walk(schema, &mut r, 0, names)?;
    if r.pos != body.len() {
        return Err(Malformed("trailing bytes after the record"));
    }
    Ok(())
}

/// A union whose first branch is null: what a field added to a schema later must be.
pub fn is_optional(schema: &Schema) -> bool {
    matches!(schema, Schema::Union(u) if matches!(u.variants().first(), Some(Schema::Null)))
}

/// `body` with `missing` null branches appended, for a record from an older writer (see
/// [`missing_trailing_fields`]); borrowed unchanged when nothing is missing.
pub fn complete(body: &[u8], missing: usize) -> std::borrow::Cow<'_, [u8]> {
    if missing == 0 {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut v = Vec::with_capacity(body.len() + missing);
    v.extend_from_slice(body);
    v.resize(body.len() + missing, 0);
    std::borrow::Cow::Owned(v)
}

/// Reads Avro's primitive encodings from a byte slice, never past its end (shared with the failure-event
/// reader).
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn is_at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// A length-prefixed UTF-8 string, borrowed from the input.
    pub(crate) fn str(&mut self) -> Result<&'a str, Malformed> {
        let n = self.len()?;
        let start = self.pos;
        self.skip(n)?;
        std::str::from_utf8(&self.buf[start..self.pos])
            .map_err(|_| Malformed("a string is not UTF-8"))
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn skip(&mut self, n: usize) -> Result<(), Malformed> {
        if n > self.left() {
            return Err(Malformed("a length runs past the end of the record"));
        }
        self.pos += n;
        Ok(())
    }

    pub(crate) fn byte(&mut self) -> Result<u8, Malformed> {
        let b = *self.buf.get(self.pos).ok_or(Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Zig-zag varint (Avro int and long); more than ten bytes is malformed.
    pub(crate) fn long(&mut self) -> Result<i64, Malformed> {
        let mut n: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
        }
        Err(Malformed("varint too long"))
    }

    /// A length that must fit in the bytes left.
    fn len(&mut self) -> Result<usize, Malformed> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| Malformed("negative length"))?;
        if n > self.left() {
            return Err(Malformed("a length runs past the end of the record"));
        }
        Ok(n)
    }

    /// A block count of an array or map; a negative count is followed by the block's size in bytes.
    fn block_count(&mut self) -> Result<usize, Malformed> {
        let n = self.long()?;
        let count = if n < 0 {
            let size = self.long()?;
            if usize::try_from(size).map_or(true, |s| s > self.left()) {
                return Err(Malformed("a block size runs past the end of the record"));
            }
            n.checked_neg().ok_or(Malformed("block count overflows"))?
        } else {
            n
        };
        let count = usize::try_from(count).map_err(|_| Malformed("negative count"))?;
        // Every item takes at least one byte, except items of `null`, which no hookrelay schema has in a
        // collection; bounding the count by the bytes left covers both.
        if count > self.left() {
            return Err(Malformed(
                "a collection claims more items than there are bytes",
            ));
        }
        Ok(count)
    }
}

fn walk(schema: &Schema, r: &mut Cursor<'_>, depth: usize, names: &Names) -> Result<(), Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed("nested too deeply"));
    }
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => match r.byte()? {
            0 | 1 => Ok(()),
            _ => Err(Malformed("a boolean is neither 0 nor 1")),
        },
        Schema::Int | Schema::Date | Schema::TimeMillis => {
            let v = r.long()?;
            i32::try_from(v)
                .map(|_| ())
                .map_err(|_| Malformed("an int is out of range"))
        }
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => r.long().map(|_| ()),
        Schema::Float => r.skip(4),
        Schema::Double => r.skip(8),
        Schema::Bytes | Schema::BigDecimal => {
            let n = r.len()?;
            r.skip(n)
        }
        Schema::String | Schema::Uuid => r.str().map(|_| ()),
        Schema::Fixed(f) => r.skip(f.size),
        Schema::Decimal(d) => walk(&d.inner, r, depth + 1, names),
        Schema::Enum(e) => {
            let i = r.long()?;
            if usize::try_from(i).map_or(true, |i| i >= e.symbols.len()) {
                return Err(Malformed("an enum index is out of range"));
            }
            Ok(())
        }
        Schema::Union(u) => {
            let i = r.long()?;
            let branch = usize::try_from(i)
                .ok()
                .and_then(|i| u.variants().get(i))
                .ok_or(Malformed("a union branch is out of range"))?;
            walk(branch, r, depth + 1, names)
        }
        Schema::Record(RecordSchema { fields, .. }) => fields
            .iter()
            .try_for_each(|f| walk(&f.schema, r, depth + 1, names)),
        Schema::Array(a) => loop {
            let count = r.block_count()?;
            if count == 0 {
                return Ok(());
            }
            for _ in 0..count {
                walk(&a.items, r, depth + 1, names)?;
            }
        },
        Schema::Map(m) => loop {
            let count = r.block_count()?;
            if count == 0 {
                return Ok(());
            }
            for _ in 0..count {
                walk(&Schema::String, r, depth + 1, names)?;
                walk(&m.types, r, depth + 1, names)?;
            }
        },
        Schema::Ref { name } => match names.get(name) {
            Some(named) => walk(named, r, depth + 1, names),
            None => Err(Malformed("a schema refers to a type it does not define")),
        },
        _ => Err(Malformed("schema type not supported for foreign input")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{failure_schema, send_request_schema};

    #[test]
    fn a_collection_claiming_more_items_than_bytes_is_refused_before_any_allocation() {
        // id, workspace_id, 16 null unions, webhook.url, webhook.request_method, then the headers union's map
        // branch with a count of 2^35 entries: the input that made apache-avro ask for 86 GB.
        let mut b = vec![2, b'a', 2, b'w'];
        b.extend([0u8; 16]);
        b.extend([2, b'u', 2, b'P', 2]);
        b.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
        assert_eq!(
            missing_trailing_fields(send_request_schema(), &b),
            Err(Malformed(
                "a collection claims more items than there are bytes"
            ))
        );
    }

    #[test]
    fn a_string_longer_than_the_record_is_refused() {
        assert_eq!(
            missing_trailing_fields(send_request_schema(), &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            Err(Malformed("a length runs past the end of the record"))
        );
        assert!(
            missing_trailing_fields(failure_schema(), &[0, 0, 0xfe, 0xff, 0xff, 0x7f]).is_err()
        );
    }

    #[test]
    fn what_apache_avro_writes_passes() {
        let json = br#"{"id":"s1","workspace_id":"ws","campaign_name":"c","webhook":{"url":"https://e.com/h",
            "request_method":"POST","request_headers":{"a":"1","b":"2"},"body":"{}"},"created_at":5}"#;
        let send = crate::events::SendRequest::decode(json, false).unwrap();
        assert_eq!(
            missing_trailing_fields(send_request_schema(), &send.to_avro()),
            Ok(0)
        );
        let mut trailing = send.to_avro();
        trailing.push(0);
        assert!(missing_trailing_fields(send_request_schema(), &trailing).is_err());
    }
}
