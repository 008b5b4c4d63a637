//! Fragment data-path messages (schema `schema/fragment.capnp`) and their
//! framing. A frame on a byte stream is
//! `u32 LE header length | Cap'n Proto header | bulk bytes`; the header says
//! how many bulk bytes follow, and those bytes are never copied into the
//! Cap'n Proto message.

use serde::{Deserialize, Serialize};

use crate::meta::Ino;

/// Identity of one stored fragment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentKey {
    pub ino: Ino,
    pub stripe: u64,
    pub generation: u64,
    /// 0..k are data fragments, k..k+m parity.
    pub index: u8,
}

impl FragmentKey {
    /// Which of `shards` executors of a storage node owns this key.
    pub fn shard(&self, shards: usize) -> usize {
        if shards == 0 {
            return 0;
        }
        let h =
            crate::meta::placement_hash(self.ino ^ self.generation.rotate_left(17), self.stripe)
                ^ self.index as u64;
        (h % shards as u64) as usize
    }
}

impl std::fmt::Display for FragmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:016x}-{:016x}-{:016x}-{:02x}",
            self.ino, self.stripe, self.generation, self.index
        )
    }
}

/// Largest fragment a node accepts (bytes). Guards the bulk length read off
/// the wire before any buffer is allocated.
pub const FRAGMENT_BYTES_MAX: u32 = 64 << 20;
/// Largest Cap'n Proto header accepted (bytes).
pub const HEADER_BYTES_MAX: u32 = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FragmentRequest {
    /// `length` bulk bytes follow, with CRC32C `crc32c`.
    Put {
        key: FragmentKey,
        length: u32,
        crc32c: u32,
    },
    /// Read `length` bytes at `offset`; the node checks the whole fragment
    /// against its own CRC and `expected_crc32c` (the one metad holds).
    Get {
        key: FragmentKey,
        offset: u32,
        length: u32,
        expected_crc32c: u32,
    },
    Delete {
        key: FragmentKey,
    },
    /// The keys the shard stores after `after` (key order), at most
    /// `limit`; answered with [`encode_keys`] bulk bytes.
    List {
        after: FragmentKey,
        limit: u32,
    },
}

/// Keys one `List` answers at most.
pub const LIST_KEYS_MAX: u32 = 4096;
/// Bytes one key takes in a `List` answer.
pub const LISTED_KEY_BYTES: usize = 25;

/// A `List` answer's bulk bytes.
pub fn encode_keys(keys: &[FragmentKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.len() * LISTED_KEY_BYTES);
    for k in keys {
        out.extend_from_slice(&k.ino.to_le_bytes());
        out.extend_from_slice(&k.stripe.to_le_bytes());
        out.extend_from_slice(&k.generation.to_le_bytes());
        out.push(k.index);
    }
    out
}

/// The keys of a `List` answer's bulk bytes.
pub fn decode_keys(bytes: &[u8]) -> Result<Vec<FragmentKey>, FrameError> {
    if !bytes.len().is_multiple_of(LISTED_KEY_BYTES) {
        return Err(FrameError::malformed(format!(
            "a key listing of {} bytes is not a whole number of {LISTED_KEY_BYTES}-byte keys",
            bytes.len()
        )));
    }
    let u64_at = |c: &[u8], at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&c[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Ok(bytes
        .chunks_exact(LISTED_KEY_BYTES)
        .map(|c| FragmentKey {
            ino: u64_at(c, 0),
            stripe: u64_at(c, 8),
            generation: u64_at(c, 16),
            index: c[24],
        })
        .collect())
}

impl FragmentRequest {
    /// The fragment the request is about.
    pub fn key(&self) -> FragmentKey {
        match self {
            FragmentRequest::Put { key, .. }
            | FragmentRequest::Get { key, .. }
            | FragmentRequest::Delete { key } => *key,
            // A listing is of the shard asked, not of a key's owner.
            FragmentRequest::List { after, .. } => *after,
        }
    }

    /// Bulk bytes the request moves: a put's sent, a get's asked for.
    pub fn bulk_bytes(&self) -> u32 {
        match self {
            FragmentRequest::Put { length, .. } | FragmentRequest::Get { length, .. } => *length,
            FragmentRequest::Delete { .. } | FragmentRequest::List { .. } => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FragmentErrorCode {
    NotFound,
    ChecksumMismatch,
    NoSpace,
    Io,
    BadRequest,
    WrongShard,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FragmentResponse {
    /// `length` bulk bytes follow (a get), else 0.
    Ok { length: u32 },
    Error {
        code: FragmentErrorCode,
        message: String,
        /// For ChecksumMismatch: the CRC expected and the one computed.
        expected: u32,
        actual: u32,
    },
}

/// Why a fragment header could not be decoded (or would not be accepted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes are not a valid Cap'n Proto header of the expected kind.
    #[error("malformed fragment header: {message}")]
    Malformed { message: String },
    /// A header length prefix above [`HEADER_BYTES_MAX`].
    #[error("fragment header of {length_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    HeaderTooLarge { length_bytes: u32, max_bytes: u32 },
    /// A bulk length above [`FRAGMENT_BYTES_MAX`].
    #[error("fragment of {length_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    FragmentTooLarge { length_bytes: u32, max_bytes: u32 },
}

impl FrameError {
    fn malformed(message: impl std::fmt::Display) -> Self {
        FrameError::Malformed {
            message: message.to_string(),
        }
    }
}

impl From<capnp::Error> for FrameError {
    fn from(e: capnp::Error) -> Self {
        FrameError::malformed(e)
    }
}

impl From<capnp::NotInSchema> for FrameError {
    fn from(e: capnp::NotInSchema) -> Self {
        FrameError::malformed(format!("unknown union or enum value {}", e.0))
    }
}

/// Longest error message put on the wire (bytes); longer ones are cut so
/// that every header fits one segment of [`HEADER_SEGMENT_WORDS`].
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// One segment of this many words holds any header we encode (a request
/// is ~10 words; a response is ~6 words plus its message).
const HEADER_SEGMENT_WORDS: u32 = 16 + (ERROR_MESSAGE_BYTES_MAX as u32).div_ceil(8) + 1;

fn check_bulk_len(length_bytes: u32) -> Result<u32, FrameError> {
    if length_bytes > FRAGMENT_BYTES_MAX {
        return Err(FrameError::FragmentTooLarge {
            length_bytes,
            max_bytes: FRAGMENT_BYTES_MAX,
        });
    }
    Ok(length_bytes)
}

fn reader_options() -> capnp::message::ReaderOptions {
    let mut opts = capnp::message::ReaderOptions::new();
    // A header is at most HEADER_BYTES_MAX: bound the traversal to it so a
    // hostile message cannot make the decoder loop over amplified pointers.
    opts.traversal_limit_in_words(Some(HEADER_BYTES_MAX as usize / 8 * 2));
    opts.nesting_limit(8);
    opts
}

fn set_key(mut b: crate::fragment_capnp::fragment_key::Builder<'_>, key: &FragmentKey) {
    b.set_ino(key.ino);
    b.set_stripe(key.stripe);
    b.set_generation(key.generation);
    b.set_index(key.index);
}

fn get_key(r: crate::fragment_capnp::fragment_key::Reader<'_>) -> FragmentKey {
    FragmentKey {
        ino: r.get_ino(),
        stripe: r.get_stripe(),
        generation: r.get_generation(),
        index: r.get_index(),
    }
}

fn to_bytes(message: &capnp::message::Builder<capnp::message::HeapAllocator>) -> Vec<u8> {
    capnp::serialize::write_message_to_words(message)
}

fn new_message() -> capnp::message::Builder<capnp::message::HeapAllocator> {
    capnp::message::Builder::new(
        capnp::message::HeapAllocator::new().first_segment_words(HEADER_SEGMENT_WORDS),
    )
}

fn parse(
    bytes: &[u8],
) -> Result<capnp::message::Reader<capnp::serialize::BufferSegments<&[u8]>>, FrameError> {
    if bytes.len() > HEADER_BYTES_MAX as usize {
        return Err(FrameError::HeaderTooLarge {
            length_bytes: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            max_bytes: HEADER_BYTES_MAX,
        });
    }
    let mut rest = bytes;
    let message = capnp::serialize::read_message_from_flat_slice(&mut rest, reader_options())?;
    if !rest.is_empty() {
        return Err(FrameError::malformed(format!(
            "{} trailing bytes after the header",
            rest.len()
        )));
    }
    Ok(message)
}

/// Encodes a request header (Cap'n Proto, standard serialization, one
/// segment). The bulk bytes of a put are not part of it.
pub fn encode_request(request: &FragmentRequest) -> Vec<u8> {
    use crate::fragment_capnp::fragment_request;
    let mut message = new_message();
    set_request(
        message.init_root::<fragment_request::Builder<'_>>(),
        request,
    );
    to_bytes(&message)
}

fn set_request(
    root: crate::fragment_capnp::fragment_request::Builder<'_>,
    request: &FragmentRequest,
) {
    match request {
        FragmentRequest::Put {
            key,
            length,
            crc32c,
        } => {
            let mut put = root.init_put();
            put.set_length(*length);
            put.set_crc32c(*crc32c);
            set_key(put.init_key(), key);
        }
        FragmentRequest::Get {
            key,
            offset,
            length,
            expected_crc32c,
        } => {
            let mut get = root.init_get();
            get.set_offset(*offset);
            get.set_length(*length);
            get.set_expected_crc32c(*expected_crc32c);
            set_key(get.init_key(), key);
        }
        FragmentRequest::Delete { key } => {
            set_key(root.init_delete().init_key(), key);
        }
        FragmentRequest::List { after, limit } => {
            let mut list = root.init_list();
            list.set_limit(*limit);
            set_key(list.init_after(), after);
        }
    }
}

/// Decodes a request header; lengths above [`FRAGMENT_BYTES_MAX`] are
/// refused here, before anyone allocates a buffer for them.
pub fn decode_request(bytes: &[u8]) -> Result<FragmentRequest, FrameError> {
    let message = parse(bytes)?;
    get_request(message.get_root::<crate::fragment_capnp::fragment_request::Reader<'_>>()?)
}

fn get_request(
    root: crate::fragment_capnp::fragment_request::Reader<'_>,
) -> Result<FragmentRequest, FrameError> {
    use crate::fragment_capnp::fragment_request::Which;
    Ok(match root.which()? {
        Which::Put(put) => FragmentRequest::Put {
            key: get_key(put.get_key()?),
            length: check_bulk_len(put.get_length())?,
            crc32c: put.get_crc32c(),
        },
        Which::Get(get) => FragmentRequest::Get {
            key: get_key(get.get_key()?),
            offset: get.get_offset(),
            length: check_bulk_len(get.get_length())?,
            expected_crc32c: get.get_expected_crc32c(),
        },
        Which::Delete(delete) => FragmentRequest::Delete {
            key: get_key(delete.get_key()?),
        },
        Which::List(list) => FragmentRequest::List {
            after: get_key(list.get_after()?),
            limit: list.get_limit(),
        },
    })
}

/// The client's registered buffer a verbs request names (RDMA READ source
/// of a put, RDMA WRITE target of a get).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteBuffer {
    pub addr: u64,
    pub rkey: u32,
    pub length: u32,
}

/// Encodes a verbs request header: the fragment request and the buffer
/// its bulk bytes come from or go to.
pub fn encode_verbs_request(request: &FragmentRequest, buffer: RemoteBuffer) -> Vec<u8> {
    use crate::fragment_capnp::verbs_request;
    let mut message = new_message();
    let mut root = message.init_root::<verbs_request::Builder<'_>>();
    set_request(root.reborrow().init_request(), request);
    let mut b = root.init_buffer();
    b.set_addr(buffer.addr);
    b.set_rkey(buffer.rkey);
    b.set_length(buffer.length);
    to_bytes(&message)
}

/// Decodes a verbs request header. The buffer must hold the request's
/// bulk bytes: a put's `length`, a get's `length`.
pub fn decode_verbs_request(bytes: &[u8]) -> Result<(FragmentRequest, RemoteBuffer), FrameError> {
    let message = parse(bytes)?;
    let root = message.get_root::<crate::fragment_capnp::verbs_request::Reader<'_>>()?;
    let request = get_request(root.get_request()?)?;
    let b = root.get_buffer()?;
    let buffer = RemoteBuffer {
        addr: b.get_addr(),
        rkey: b.get_rkey(),
        length: check_bulk_len(b.get_length())?,
    };
    let needed = request.bulk_bytes();
    if buffer.length < needed {
        return Err(FrameError::malformed(format!(
            "remote buffer of {} bytes cannot hold the request's {needed} bytes",
            buffer.length
        )));
    }
    Ok((request, buffer))
}

fn code_to_capnp(code: FragmentErrorCode) -> crate::fragment_capnp::ErrorCode {
    use crate::fragment_capnp::ErrorCode as C;
    match code {
        FragmentErrorCode::NotFound => C::NotFound,
        FragmentErrorCode::ChecksumMismatch => C::ChecksumMismatch,
        FragmentErrorCode::NoSpace => C::NoSpace,
        FragmentErrorCode::Io => C::Io,
        FragmentErrorCode::BadRequest => C::BadRequest,
        FragmentErrorCode::WrongShard => C::WrongShard,
    }
}

fn code_from_capnp(code: crate::fragment_capnp::ErrorCode) -> FragmentErrorCode {
    use crate::fragment_capnp::ErrorCode as C;
    match code {
        C::NotFound => FragmentErrorCode::NotFound,
        C::ChecksumMismatch => FragmentErrorCode::ChecksumMismatch,
        C::NoSpace => FragmentErrorCode::NoSpace,
        C::Io => FragmentErrorCode::Io,
        C::BadRequest => FragmentErrorCode::BadRequest,
        C::WrongShard => FragmentErrorCode::WrongShard,
    }
}

/// Encodes a response header; the bulk bytes of a get follow it separately.
pub fn encode_response(response: &FragmentResponse) -> Vec<u8> {
    use crate::fragment_capnp::fragment_response;
    let mut message = new_message();
    let root = message.init_root::<fragment_response::Builder<'_>>();
    match response {
        FragmentResponse::Ok { length } => root.init_ok().set_length(*length),
        FragmentResponse::Error {
            code,
            message: text,
            expected,
            actual,
        } => {
            let mut error = root.init_error();
            error.set_code(code_to_capnp(*code));
            error.set_expected(*expected);
            error.set_actual(*actual);
            let mut cut = text.len().min(ERROR_MESSAGE_BYTES_MAX);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            error.set_message(&text[..cut]);
        }
    }
    to_bytes(&message)
}

/// Decodes a response header.
pub fn decode_response(bytes: &[u8]) -> Result<FragmentResponse, FrameError> {
    use crate::fragment_capnp::fragment_response::Which;
    let message = parse(bytes)?;
    let root = message.get_root::<crate::fragment_capnp::fragment_response::Reader<'_>>()?;
    Ok(match root.which()? {
        Which::Ok(ok) => FragmentResponse::Ok {
            length: check_bulk_len(ok.get_length())?,
        },
        Which::Error(error) => FragmentResponse::Error {
            code: code_from_capnp(error.get_code()?),
            message: error
                .get_message()?
                .to_string()
                .map_err(FrameError::malformed)?,
            expected: error.get_expected(),
            actual: error.get_actual(),
        },
    })
}

#[cfg(test)]
mod tests;
