//! Turning items into record frames and back.
//!
//! Items are encoded with bincode 2 through serde, using its standard
//! configuration (little-endian, variable-length integers). Encoding is done
//! by the sending thread into a buffer of its own, outside every lock, so
//! senders that spill never wait on each other's serialization.

use std::cell::RefCell;
use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::segment::format::{payload_of, seal_frame, FRAME_HEADER_LEN, SEQ_LEN};

/// A thread's encode buffer is shrunk back to this many bytes after an
/// unusually large item, so one big item does not pin memory forever.
const RETAINED_ENCODE_BUFFER_BYTES: usize = 1 << 20;

thread_local! {
    /// Reused by every spill on this thread: no allocation per item.
    static ENCODE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `item` as a record frame and hands the frame's bytes to
/// `use_frame`, for it to give the frame its sequence number
/// ([`stamp_frame`](crate::segment::format::stamp_frame)). The bytes live
/// in a per-thread buffer that is reused.
///
/// # Errors
///
/// `InvalidData` when serde refuses the item, `InvalidInput` when the
/// encoding is larger than a frame can describe.
pub(crate) fn with_frame<T: Serialize, R>(item: &T, use_frame: impl FnOnce(&mut [u8]) -> R) -> io::Result<R> {
    ENCODE_BUFFER.with(|cell| {
        // A re-entrant call (an item whose Serialize sends on a channel)
        // gets a fresh buffer instead of a borrow panic.
        let mut fresh = Vec::new();
        let mut borrowed = cell.try_borrow_mut().ok();
        let buffer = borrowed.as_deref_mut().unwrap_or(&mut fresh);
        buffer.clear();
        buffer.resize(FRAME_HEADER_LEN, 0);
        let result = encode_into(item, buffer).map(|()| use_frame(buffer));
        if buffer.capacity() > RETAINED_ENCODE_BUFFER_BYTES {
            *buffer = Vec::new();
        }
        result
    })
}

fn encode_into<T: Serialize>(item: &T, buffer: &mut Vec<u8>) -> io::Result<()> {
    bincode::serde::encode_into_std_write(item, buffer, config())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("cannot encode item: {err}")))?;
    buffer.extend_from_slice(&[0; SEQ_LEN]);
    seal_frame(buffer).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "item encodes to more than 4 GiB"))
}

/// A copy of `item`, made by encoding and decoding it: for a type that
/// is not `Clone`, such as an item still in the channel that must also go
/// elsewhere.
pub(crate) fn duplicate<T: Serialize + DeserializeOwned>(item: &T) -> io::Result<T> {
    with_frame(item, |frame| decode::<T>(payload_of(frame)))?
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("cannot read the item back: {err}")))
}

/// The number of bytes `item` encodes to, without encoding it anywhere.
pub(crate) fn encoded_len<T: Serialize>(item: &T) -> Option<usize> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(item, &mut size, config()).ok()?;
    Some(size.bytes_written)
}

/// Decodes one record payload. The whole payload must be consumed: trailing
/// bytes mean the record is not what it claims to be.
///
/// A damaged length prefix inside the payload (one that passed the CRC
/// because it was written that way) must not make the decoder allocate
/// without bound, so decoding runs under a limit: sixteen times the
/// smallest power of two at least as large as the payload. bincode counts
/// the in-memory size of every number it decodes (at most 16 bytes from
/// one byte on the wire) and the length of every string and byte buffer
/// it allocates, so a legitimate payload never claims more than sixteen
/// times its length, and a forged one can allocate at most 32 times it.
///
/// A short payload is decoded from a zero-padded copy: bincode reads a
/// variable-length integer in one step only when the next 17 bytes are
/// there (the longest integer it can find), and byte by byte otherwise,
/// which for small records was most of the decoding. The padding is never
/// part of the item: decoding must still end exactly at the payload's end.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    if payload.len() <= PADDED_BELOW {
        let mut padded = [0u8; PADDED_BELOW + LONGEST_PEEK];
        padded[..payload.len()].copy_from_slice(payload);
        return decode_within(&padded[..payload.len() + LONGEST_PEEK], payload.len());
    }
    decode_within(payload, payload.len())
}

/// Payloads up to this length are decoded from a padded copy.
const PADDED_BELOW: usize = 128;

/// The most bytes bincode looks at to read one integer (a `u128`'s
/// marker byte and 16 bytes).
const LONGEST_PEEK: usize = 17;

/// Decodes the item whose payload is the first `len` bytes of `bytes`,
/// under the limit [`decode`] describes.
fn decode_within<T: DeserializeOwned>(bytes: &[u8], len: usize) -> Result<T, String> {
    macro_rules! decode_within {
        ($($bits:literal)*) => {
            match len.max(1).next_power_of_two().trailing_zeros() + 4 {
                $($bits => bincode::serde::decode_from_slice::<T, _>(bytes, config().with_limit::<{ 1usize << $bits }>()),)*
                _ => bincode::serde::decode_from_slice::<T, _>(bytes, config().with_limit::<{ usize::MAX }>()),
            }
        };
    }
    let decoded =
        decode_within!(4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36);
    match decoded {
        Ok((item, used)) if used == len => Ok(item),
        Ok((_, used)) if used < len => Err(format!("{} trailing bytes after the item", len - used)),
        Ok((_, used)) => Err(format!("the item runs {} bytes past its payload", used - len)),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::format::{read_frame, stamp_frame, Frame, VERSION};

    #[test]
    fn a_cut_short_payload_fails_even_though_its_padded_copy_would_decode() {
        let whole = bincode::serde::encode_to_vec((1u64, 2u64, String::from("abc")), config()).unwrap();
        for cut in 1..whole.len() {
            let err = decode::<(u64, u64, String)>(&whole[..cut]).unwrap_err();
            assert!(!err.is_empty(), "cut at {cut}");
        }
        assert_eq!(decode::<(u64, u64, String)>(&whole).unwrap(), (1, 2, String::from("abc")));
        // Cut after the two numbers, the string's length reads as the
        // padding's zero: an empty string, one byte past the payload.
        let err = decode::<(u64, u64, String)>(&whole[..2]).unwrap_err();
        assert!(err.contains("past its payload"), "{err}");
    }

    #[test]
    fn short_and_long_payloads_decode_alike() {
        for len in [0usize, 1, 100, 127, 128, 129, 1_000] {
            let item = vec![7u64; len];
            let payload = bincode::serde::encode_to_vec(&item, config()).unwrap();
            assert_eq!(decode::<Vec<u64>>(&payload).unwrap(), item, "{len}");
        }
    }

    #[test]
    fn frames_round_trip_through_the_reader() {
        let item = (7u32, String::from("seven"), vec![1u8, 2, 3]);
        let frame = with_frame(&item, |frame| {
            stamp_frame(frame, 9);
            frame.to_vec()
        })
        .unwrap();
        let Frame::Record { payload, seq, next } = read_frame(&frame, 0, frame.len(), VERSION) else {
            panic!("frame not readable");
        };
        assert_eq!((next, seq), (frame.len(), Some(9)));
        assert_eq!(decode::<(u32, String, Vec<u8>)>(payload).unwrap(), item);
    }

    #[test]
    fn a_huge_string_length_inside_a_payload_is_refused_without_allocating_it() {
        for claimed in [u64::MAX, 1 << 42, 1 << 20] {
            let mut payload = vec![0xfd];
            payload.extend_from_slice(&claimed.to_le_bytes());
            payload.extend_from_slice(b"ab");
            assert!(decode::<String>(&payload).is_err(), "{claimed}");
            assert!(decode::<Vec<u8>>(&payload).is_err(), "{claimed}");
        }
        let big = "x".repeat(100_000);
        let frame = with_frame(&big, |frame| frame.to_vec()).unwrap();
        assert_eq!(decode::<String>(payload_of(&frame)).unwrap(), big, "real strings still decode");
        let numbers: Vec<u64> = (0..10_000).collect();
        let frame = with_frame(&numbers, |frame| frame.to_vec()).unwrap();
        assert_eq!(decode::<Vec<u64>>(payload_of(&frame)).unwrap(), numbers);
        let wide = vec![0u128; 10_000]; // one byte each on the wire, sixteen in memory
        let frame = with_frame(&wide, |frame| frame.to_vec()).unwrap();
        assert_eq!(decode::<Vec<u128>>(payload_of(&frame)).unwrap(), wide);
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        assert!(decode::<String>(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<u8>(&[1, 2]).is_err(), "trailing bytes must be refused");
        assert!(decode::<Vec<u64>>(&[0xfc, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
