//! The client's fragment checks, the same over every transport: length
//! limits, the one-byte probe that proves a read from offset 0 got the
//! whole fragment (so the bytes as received are checked against the CRC32C
//! metad holds, at no extra round trip), and how a node's refusal maps to
//! a [`TransportError`].

use std::net::SocketAddr;

use torchfs_proto::fragment::{
    FragmentErrorCode, FragmentKey, FragmentRequest, FragmentResponse, FRAGMENT_BYTES_MAX,
};

use crate::TransportError;

/// `len` as a wire length, refused above `max_bytes` (and the wire limit).
pub fn fragment_len(key: FragmentKey, len: usize, max_bytes: usize) -> Result<u32, TransportError> {
    let max_bytes = max_bytes.min(FRAGMENT_BYTES_MAX as usize);
    u32::try_from(len)
        .ok()
        .filter(|n| *n as usize <= max_bytes)
        .ok_or(TransportError::TooLarge {
            key,
            length_bytes: len,
            max_bytes: max_bytes as u32,
        })
}

/// The get request for `wanted` bytes at `offset`, and whether it probes:
/// a read from offset 0 asks for one byte more than it wants. The node
/// clamps ranges to the fragment's end, so a reply of exactly `wanted`
/// bytes proves the caller's buffer holds the whole fragment.
pub fn get_request(
    key: FragmentKey,
    offset: u32,
    wanted: u32,
    expected_crc32c: u32,
) -> (FragmentRequest, bool) {
    let probe = offset == 0 && wanted < FRAGMENT_BYTES_MAX;
    let request = FragmentRequest::Get {
        key,
        offset,
        length: wanted + u32::from(probe),
        expected_crc32c,
    };
    (request, probe)
}

/// The bulk length a get's response announces, checked against what was
/// asked: fewer bytes than wanted is a short fragment, more than asked a
/// protocol error.
pub fn reply_length(
    addr: SocketAddr,
    key: FragmentKey,
    offset: u32,
    wanted: u32,
    probe: bool,
    response: FragmentResponse,
) -> Result<u32, TransportError> {
    let length = match response {
        FragmentResponse::Ok { length } => length,
        other => return Err(refused(addr, key, other)),
    };
    if length < wanted {
        return Err(TransportError::ShortFragment {
            addr,
            key,
            offset,
            requested_bytes: wanted,
            available_bytes: length,
        });
    }
    if length > wanted + u32::from(probe) {
        return Err(TransportError::Protocol {
            addr,
            message: format!(
                "{key}: asked for {} bytes, the reply has {length}",
                wanted + u32::from(probe)
            ),
        });
    }
    Ok(length)
}

/// Whether a get's reply brought the whole fragment: a read from offset 0
/// whose reply was exactly the `wanted` bytes (not the probe byte more).
pub fn is_whole(offset: u32, wanted: u32, reply_length: u32) -> bool {
    offset == 0 && reply_length == wanted
}

/// When `buf` holds the whole fragment, checks it against the CRC metad
/// holds (catching corruption on the way, not only on disk).
pub fn check_whole(
    addr: SocketAddr,
    key: FragmentKey,
    whole: bool,
    expected_crc32c: u32,
    buf: &[u8],
) -> Result<(), TransportError> {
    if whole {
        let actual = crc32c::crc32c(buf);
        if actual != expected_crc32c {
            return Err(TransportError::ChecksumMismatch {
                addr,
                key,
                expected: expected_crc32c,
                actual,
            });
        }
    }
    Ok(())
}

/// The error a non-Ok response (or an Ok where none was expected) means.
pub fn refused(addr: SocketAddr, key: FragmentKey, response: FragmentResponse) -> TransportError {
    match response {
        FragmentResponse::Error {
            code: FragmentErrorCode::ChecksumMismatch,
            expected,
            actual,
            ..
        } => TransportError::ChecksumMismatch {
            addr,
            key,
            expected,
            actual,
        },
        FragmentResponse::Error { code, message, .. } => TransportError::Remote {
            addr,
            key,
            code,
            message,
        },
        FragmentResponse::Ok { length } => TransportError::Protocol {
            addr,
            message: format!("unexpected {length} bulk bytes in a reply for {key}"),
        },
    }
}
