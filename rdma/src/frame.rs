//! Frames on a byte stream: `u32 LE header length | Cap'n Proto header |
//! bulk bytes`. Generic over `futures::io` traits so that the tokio client
//! (through `tokio_util::compat`) and the glommio storage node run the same
//! code. Lengths read off the wire are checked against `HEADER_BYTES_MAX`
//! and `FRAGMENT_BYTES_MAX` before anything is allocated; bulk bytes are
//! written from and read into the caller's buffers, never copied into a
//! message.

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use torchfs_proto::fragment::{
    decode_request, decode_response, encode_request, encode_response, FragmentRequest,
    FragmentResponse, FrameError, HEADER_BYTES_MAX,
};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Bytes discarded per read when skipping unwanted bulk bytes.
const SKIP_CHUNK_BYTES: usize = 64 << 10;

/// Writes one header (already encoded) and its bulk bytes, then flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: &[u8],
    bulk: &[u8],
) -> Result<(), FrameIoError> {
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|n| *n <= HEADER_BYTES_MAX)
        .ok_or(FrameError::HeaderTooLarge {
            length_bytes: u32::try_from(header.len()).unwrap_or(u32::MAX),
            max_bytes: HEADER_BYTES_MAX,
        })?;
    // Prefix and header go out in one write (a small copy of the header
    // only); the bulk goes straight from the caller's slice.
    let mut head = Vec::with_capacity(4 + header.len());
    head.extend_from_slice(&header_len.to_le_bytes());
    head.extend_from_slice(header);
    w.write_all(&head).await?;
    if !bulk.is_empty() {
        w.write_all(bulk).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Reads one header. `Ok(None)` when the peer closed the stream cleanly
/// before the first byte of a frame (the end of a connection, not an error).
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, FrameIoError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let n = r.read(&mut prefix[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        filled += n;
    }
    let length_bytes = u32::from_le_bytes(prefix);
    if length_bytes > HEADER_BYTES_MAX {
        return Err(FrameError::HeaderTooLarge {
            length_bytes,
            max_bytes: HEADER_BYTES_MAX,
        }
        .into());
    }
    let mut header = vec![0u8; length_bytes as usize];
    r.read_exact(&mut header).await?;
    Ok(Some(header))
}

/// Writes a request header followed by `bulk` (a put's data, else empty).
pub async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    request: &FragmentRequest,
    bulk: &[u8],
) -> Result<(), FrameIoError> {
    write_frame(w, &encode_request(request), bulk).await
}

/// Reads a request header; the caller then reads a put's bulk bytes with
/// [`read_bulk`]. `Ok(None)` on a clean end of stream.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<FragmentRequest>, FrameIoError> {
    match read_header(r).await? {
        None => Ok(None),
        Some(header) => Ok(Some(decode_request(&header)?)),
    }
}

/// Writes a response header followed by `bulk` (a get's data, else empty).
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    response: &FragmentResponse,
    bulk: &[u8],
) -> Result<(), FrameIoError> {
    write_frame(w, &encode_response(response), bulk).await
}

/// Reads a response header; a clean end of stream is an error here (a
/// response was due).
pub async fn read_response<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<FragmentResponse, FrameIoError> {
    match read_header(r).await? {
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed before responding",
        )
        .into()),
        Some(header) => Ok(decode_response(&header)?),
    }
}

/// Reads exactly `buf.len()` bulk bytes into `buf`.
pub async fn read_bulk<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameIoError> {
    r.read_exact(buf).await?;
    Ok(())
}

/// Reads and discards `length_bytes` bulk bytes (a refused put's data), with
/// a bounded scratch buffer, so the stream stays usable for the next frame.
pub async fn skip_bulk<R: AsyncRead + Unpin>(
    r: &mut R,
    length_bytes: u64,
) -> Result<(), FrameIoError> {
    let mut scratch = vec![0u8; SKIP_CHUNK_BYTES.min(length_bytes as usize)];
    let mut left = length_bytes;
    while left > 0 {
        let n = (left as usize).min(scratch.len());
        r.read_exact(&mut scratch[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey, FRAGMENT_BYTES_MAX};

    fn key() -> FragmentKey {
        FragmentKey {
            ino: 1,
            stripe: 2,
            generation: 3,
            index: 4,
        }
    }

    #[test]
    fn request_and_bulk_round_trip() {
        block_on(async {
            let data = b"hello fragment".to_vec();
            let request = FragmentRequest::Put {
                key: key(),
                length: data.len() as u32,
                crc32c: crc32c::crc32c(&data),
            };
            let mut wire = Vec::new();
            write_request(&mut wire, &request, &data).await.unwrap();
            write_response(&mut wire, &FragmentResponse::Ok { length: 0 }, &[])
                .await
                .unwrap();
            let mut r = futures::io::Cursor::new(wire);
            assert_eq!(read_request(&mut r).await.unwrap(), Some(request));
            let mut bulk = vec![0u8; data.len()];
            read_bulk(&mut r, &mut bulk).await.unwrap();
            assert_eq!(bulk, data);
            assert_eq!(
                read_response(&mut r).await.unwrap(),
                FragmentResponse::Ok { length: 0 }
            );
            assert_eq!(
                read_request(&mut r).await.unwrap(),
                None,
                "clean end of stream"
            );
        });
    }

    #[test]
    fn oversized_header_rejected_before_allocation() {
        block_on(async {
            let mut r = futures::io::Cursor::new(u32::MAX.to_le_bytes().to_vec());
            assert!(matches!(
                read_request(&mut r).await,
                Err(FrameIoError::Frame(FrameError::HeaderTooLarge { .. }))
            ));
        });
    }

    #[test]
    fn oversized_bulk_rejected() {
        block_on(async {
            let request = FragmentRequest::Get {
                key: key(),
                offset: 0,
                length: FRAGMENT_BYTES_MAX + 1,
                expected_crc32c: 0,
            };
            let mut wire = Vec::new();
            write_request(&mut wire, &request, &[]).await.unwrap();
            let mut r = futures::io::Cursor::new(wire);
            assert!(matches!(
                read_request(&mut r).await,
                Err(FrameIoError::Frame(FrameError::FragmentTooLarge { .. }))
            ));
        });
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        block_on(async {
            let mut wire = Vec::new();
            let response = FragmentResponse::Error {
                code: FragmentErrorCode::NotFound,
                message: "no such fragment".into(),
                expected: 0,
                actual: 0,
            };
            write_response(&mut wire, &response, &[]).await.unwrap();
            for cut in 1..wire.len() {
                let mut r = futures::io::Cursor::new(wire[..cut].to_vec());
                assert!(read_response(&mut r).await.is_err(), "cut at {cut}");
            }
            let mut garbage = 16u32.to_le_bytes().to_vec();
            garbage.extend_from_slice(&[0xab; 16]);
            let mut r = futures::io::Cursor::new(garbage);
            assert!(read_request(&mut r).await.is_err());
        });
    }

    #[test]
    fn skip_bulk_leaves_stream_at_next_frame() {
        block_on(async {
            let mut wire = Vec::new();
            write_frame(
                &mut wire,
                &encode_request(&FragmentRequest::Delete { key: key() }),
                &[7u8; 200_000],
            )
            .await
            .unwrap();
            write_request(&mut wire, &FragmentRequest::Delete { key: key() }, &[])
                .await
                .unwrap();
            let mut r = futures::io::Cursor::new(wire);
            read_request(&mut r).await.unwrap();
            skip_bulk(&mut r, 200_000).await.unwrap();
            assert_eq!(
                read_request(&mut r).await.unwrap(),
                Some(FragmentRequest::Delete { key: key() })
            );
        });
    }
}
