//! Unit tests of `fragment`.

use super::*;

fn key() -> FragmentKey {
    FragmentKey {
        ino: 0x1234_5678_9abc,
        stripe: 7,
        generation: u64::MAX,
        index: 5,
    }
}

#[test]
fn verbs_requests_round_trip_and_refuse_a_buffer_too_small() {
    let buffer = RemoteBuffer {
        addr: 0x7f00_dead_0000,
        rkey: 0x1234,
        length: 1 << 20,
    };
    let put = FragmentRequest::Put {
        key: key(),
        length: 1 << 20,
        crc32c: 9,
    };
    let bytes = encode_verbs_request(&put, buffer);
    assert_eq!(decode_verbs_request(&bytes), Ok((put.clone(), buffer)));
    let delete = FragmentRequest::Delete { key: key() };
    let none = RemoteBuffer {
        length: 0,
        ..buffer
    };
    let bytes = encode_verbs_request(&delete, none);
    assert_eq!(decode_verbs_request(&bytes), Ok((delete, none)));
    // A put whose bytes would not fit the named buffer is malformed.
    let small = RemoteBuffer {
        length: 4096,
        ..buffer
    };
    let bytes = encode_verbs_request(&put, small);
    assert!(matches!(
        decode_verbs_request(&bytes),
        Err(FrameError::Malformed { .. })
    ));
    // So is a TCP header (not a verbs one) and garbage.
    assert!(decode_verbs_request(&[1, 2, 3]).is_err());
}

#[test]
fn key_listings_round_trip_and_a_torn_one_is_refused() {
    let keys = [
        key(),
        FragmentKey {
            ino: u64::MAX,
            stripe: 1,
            generation: 2,
            index: 255,
        },
    ];
    let bytes = encode_keys(&keys);
    assert_eq!(bytes.len(), 2 * LISTED_KEY_BYTES);
    assert_eq!(decode_keys(&bytes).unwrap(), keys);
    assert!(decode_keys(&bytes[..30]).is_err());
    assert!(decode_keys(&[]).unwrap().is_empty());
}

#[test]
fn requests_round_trip() {
    let requests = [
        FragmentRequest::Put {
            key: key(),
            length: 1 << 20,
            crc32c: 0xdead_beef,
        },
        FragmentRequest::Get {
            key: key(),
            offset: 4096,
            length: 100,
            expected_crc32c: 42,
        },
        FragmentRequest::Delete { key: key() },
        FragmentRequest::List {
            after: key(),
            limit: LIST_KEYS_MAX,
        },
    ];
    for request in requests {
        let bytes = encode_request(&request);
        assert!(bytes.len() < 128, "header is {} bytes", bytes.len());
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(decode_request(&bytes).unwrap(), request);
    }
}

#[test]
fn responses_round_trip() {
    let responses = [
        FragmentResponse::Ok { length: 0 },
        FragmentResponse::Ok {
            length: FRAGMENT_BYTES_MAX,
        },
        FragmentResponse::Error {
            code: FragmentErrorCode::ChecksumMismatch,
            message: "stored fragment is corrupt".into(),
            expected: 1,
            actual: 2,
        },
        FragmentResponse::Error {
            code: FragmentErrorCode::NoSpace,
            message: "x".repeat(2000),
            expected: 0,
            actual: 0,
        },
    ];
    for response in responses {
        let bytes = encode_response(&response);
        assert_eq!(&bytes[..4], &[0, 0, 0, 0], "one segment");
        let mut want = response.clone();
        if let FragmentResponse::Error { message, .. } = &mut want {
            message.truncate(ERROR_MESSAGE_BYTES_MAX);
        }
        assert_eq!(decode_response(&bytes).unwrap(), want);
    }
}

#[test]
fn single_segment() {
    let bytes = encode_request(&FragmentRequest::Delete { key: key() });
    // Standard framing: u32 (segment count - 1) first.
    assert_eq!(&bytes[..4], &[0, 0, 0, 0]);
}

#[test]
fn oversized_lengths_rejected() {
    let bytes = encode_request(&FragmentRequest::Put {
        key: key(),
        length: FRAGMENT_BYTES_MAX + 1,
        crc32c: 0,
    });
    assert!(matches!(
        decode_request(&bytes),
        Err(FrameError::FragmentTooLarge { .. })
    ));
    let bytes = encode_response(&FragmentResponse::Ok { length: u32::MAX });
    assert!(matches!(
        decode_response(&bytes),
        Err(FrameError::FragmentTooLarge { .. })
    ));
}

#[test]
fn garbage_rejected_without_panic() {
    assert!(decode_request(&[]).is_err());
    assert!(decode_request(&[1, 2, 3]).is_err());
    assert!(decode_response(&[0xff; 64]).is_err());
    let good = encode_request(&FragmentRequest::Get {
        key: key(),
        offset: 0,
        length: 10,
        expected_crc32c: 0,
    });
    // Truncations and trailing junk.
    for cut in 0..good.len() {
        assert!(decode_request(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = good.clone();
    long.extend_from_slice(&[0; 8]);
    assert!(decode_request(&long).is_err());
    // Every single-byte corruption must decode or fail, never panic.
    for i in 0..good.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] = v;
            let _ = decode_request(&bad);
            let _ = decode_response(&bad);
        }
    }
    // Pseudo-random garbage.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..512usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
    }
    assert!(decode_request(&vec![0; HEADER_BYTES_MAX as usize + 8]).is_err());
}
