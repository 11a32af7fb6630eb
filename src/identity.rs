//! The item type a channel holds: recorded in `dir/name/sump.type` when
//! the channel is first opened, and checked by every later open.
//!
//! Items on disk carry no type information of their own (bincode writes
//! only values), so a channel written as `u32` and read as `i32` would
//! deliver wrong values, and one read as another struct would fail to
//! decode and set every segment aside. The type file turns both into a
//! clear [`OpenError::TypeMismatch`] before anything on disk is touched.
//!
//! The identity is the type's name as `std::any::type_name` gives it and
//! the [`Builder::schema_version`](crate::Builder::schema_version) (0 by
//! default). The name is not promised to be stable across compiler
//! releases; a new compiler that spells a type differently needs
//! [`Builder::allow_type_change`](crate::Builder::allow_type_change) once.
//!
//! The byte layout is in `FORMAT.md` ("Type file"), pinned by
//! `tests::type_file_bytes_are_pinned_and_damage_is_refused`.
//!
//! In `Overflow` mode the old items are discarded at open anyway, so the
//! file is simply replaced. A damaged type file is replaced with a
//! warning: it protects against a mistake, and the items are still there.

use std::io;

use crate::dir::ChannelDir;
use crate::err::OpenError;
pub(crate) use crate::options::TypeIdentity;
use crate::storage::replace_file;

/// Name of the type file in a channel's directory.
pub(crate) const TYPE_FILE: &str = "sump.type";

const MAGIC: [u8; 8] = *b"SUMPTYPE";
const VERSION: u16 = 1;
/// Longest type name recorded, in bytes; longer names are cut.
const MAX_NAME: usize = 4096;

impl TypeIdentity {
    fn describe(name: &str, schema: u32) -> String {
        format!("{name} (schema version {schema})")
    }
}

fn encode(name: &str, schema: u32) -> Vec<u8> {
    let mut cut = name.len().min(MAX_NAME);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = &name.as_bytes()[..cut];
    let mut bytes = Vec::with_capacity(24 + name.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&schema.to_le_bytes());
    bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
    bytes.extend_from_slice(name);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<(String, u32)> {
    if bytes.len() < 24 || bytes[0..8] != MAGIC || bytes[8..10] != VERSION.to_le_bytes() {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let schema = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
    let len = u32::from_le_bytes(bytes[16..20].try_into().ok()?) as usize;
    if body.len() != 20 + len {
        return None;
    }
    Some((String::from_utf8(body[20..].to_vec()).ok()?, schema))
}

/// Checks the channel's recorded item type against `wanted`, recording it
/// when there is none. In the durable modes a different one fails with
/// [`OpenError::TypeMismatch`] unless `wanted.allow_change`.
pub(crate) fn check(dir: &ChannelDir, wanted: &TypeIdentity, durable: bool) -> Result<(), OpenError> {
    let fs = dir.fs();
    let path = dir.path().join(TYPE_FILE);
    let wanted_bytes = encode(&wanted.name, wanted.schema);
    let recorded = match fs.read_all(&path) {
        Ok(bytes) if bytes == wanted_bytes => return Ok(()),
        Ok(bytes) => match decode(&bytes) {
            Some(recorded) => Some(recorded),
            None => {
                tracing::warn!(path = %path.display(), "the type file is damaged; recording the type anew");
                None
            }
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(OpenError::io(&path, err)),
    };
    if let Some((name, schema)) = recorded {
        if durable && !wanted.allow_change {
            return Err(OpenError::TypeMismatch {
                path: dir.path().to_owned(),
                recorded: TypeIdentity::describe(&name, schema),
                requested: TypeIdentity::describe(&wanted.name, wanted.schema),
            });
        }
        if durable {
            tracing::warn!(from = %TypeIdentity::describe(&name, schema),
                to = %TypeIdentity::describe(&wanted.name, wanted.schema), "item type changed, as allowed");
        }
    }
    replace_file(&**fs, dir.path(), TYPE_FILE, "sump.type.tmp", &wanted_bytes, durable)
        .map_err(|err| OpenError::io(&path, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_file_bytes_are_pinned_and_damage_is_refused() {
        let bytes = encode("u32", 7);
        let mut expected = b"SUMPTYPE\x01\x00\x00\x00\x07\x00\x00\x00\x03\x00\x00\x00u32".to_vec();
        expected.extend_from_slice(&crc32c::crc32c(&expected).to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(decode(&bytes), Some(("u32".to_string(), 7)));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert_eq!(decode(&damaged), None, "byte {at}");
        }
    }
}
