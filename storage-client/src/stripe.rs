//! Stripe math (docs/ARCHITECTURE.md: Data path): where file bytes live. The code is
//! systematic: data fragment `i` of stripe `s` holds file bytes
//! `[s*k*unit + i*unit, s*k*unit + (i+1)*unit)`. Fragments past a stripe's
//! `encoded_bytes` are not stored and read as zeros; bytes past its
//! `valid_bytes` (lowered by truncation) read as zeros whatever is stored.
//! Pure functions only: no I/O, so every edge case is unit-tested here.

use torchfs_proto::fragment::FRAGMENT_BYTES_MAX;
use torchfs_proto::meta::{StripeConfig, StripeEntry};

/// A stripe configuration or layout entry that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    #[error("bad stripe config k={k} m={m} unit={unit_bytes} bytes")]
    BadConfig { k: u8, m: u8, unit_bytes: u32 },
    #[error("stripe {stripe}: {crcs} checksums for a code of width {width}")]
    CrcCount {
        stripe: u64,
        crcs: usize,
        width: usize,
    },
    #[error(
        "stripe {stripe}: encoded_bytes {encoded_bytes} exceeds the stripe size {stripe_bytes}"
    )]
    EncodedTooLarge {
        stripe: u64,
        encoded_bytes: u32,
        stripe_bytes: u64,
    },
    #[error("stripe {stripe}: valid_bytes {valid_bytes} exceeds encoded_bytes {encoded_bytes}")]
    ValidAboveEncoded {
        stripe: u64,
        valid_bytes: u32,
        encoded_bytes: u32,
    },
    #[error("offset {offset} + {len_bytes} bytes is past the largest file size")]
    Overflow { offset: u64, len_bytes: u64 },
}

/// Checks a configuration read off the wire before any arithmetic trusts it.
pub fn validate_config(cfg: &StripeConfig) -> Result<(), StripeError> {
    let ok = cfg.k >= 1
        && cfg.m >= 1
        && cfg.width() <= 255
        && cfg.unit_bytes >= 1
        && cfg.unit_bytes <= FRAGMENT_BYTES_MAX
        // encoded_bytes/valid_bytes are u32 offsets inside a stripe.
        && cfg.stripe_bytes() <= u32::MAX as u64;
    if ok {
        Ok(())
    } else {
        Err(StripeError::BadConfig {
            k: cfg.k,
            m: cfg.m,
            unit_bytes: cfg.unit_bytes,
        })
    }
}

/// Checks a layout entry against its (validated) configuration.
pub fn validate_entry(cfg: &StripeConfig, entry: &StripeEntry) -> Result<(), StripeError> {
    if entry.crcs.len() != cfg.width() {
        return Err(StripeError::CrcCount {
            stripe: entry.stripe,
            crcs: entry.crcs.len(),
            width: cfg.width(),
        });
    }
    if entry.encoded_bytes as u64 > cfg.stripe_bytes() {
        return Err(StripeError::EncodedTooLarge {
            stripe: entry.stripe,
            encoded_bytes: entry.encoded_bytes,
            stripe_bytes: cfg.stripe_bytes(),
        });
    }
    if entry.valid_bytes > entry.encoded_bytes {
        return Err(StripeError::ValidAboveEncoded {
            stripe: entry.stripe,
            valid_bytes: entry.valid_bytes,
            encoded_bytes: entry.encoded_bytes,
        });
    }
    Ok(())
}

/// The stripe holding file byte `offset`.
pub fn stripe_of(cfg: &StripeConfig, offset: u64) -> u64 {
    offset / cfg.stripe_bytes()
}

/// File offset of the first byte of `stripe`.
pub fn stripe_start(cfg: &StripeConfig, stripe: u64) -> u64 {
    stripe * cfg.stripe_bytes()
}

/// Stored length of data fragment `index` of a stripe encoded with
/// `encoded_bytes`; 0 when the fragment is past the end (not stored).
pub fn data_fragment_bytes(cfg: &StripeConfig, encoded_bytes: u32, index: usize) -> u32 {
    let start = index as u64 * cfg.unit_bytes as u64;
    let encoded = encoded_bytes as u64;
    if start >= encoded {
        0
    } else {
        (encoded - start).min(cfg.unit_bytes as u64) as u32
    }
}

/// Length of every parity fragment (the longest data fragment's length:
/// parity is computed over data zero-padded to it).
pub fn parity_fragment_bytes(cfg: &StripeConfig, encoded_bytes: u32) -> u32 {
    encoded_bytes.min(cfg.unit_bytes)
}

/// Stored length of fragment `index` (data or parity); 0: not stored.
pub fn fragment_bytes(cfg: &StripeConfig, encoded_bytes: u32, index: usize) -> u32 {
    if index < cfg.k as usize {
        data_fragment_bytes(cfg, encoded_bytes, index)
    } else {
        parity_fragment_bytes(cfg, encoded_bytes)
    }
}

/// How many leading bytes of `[offset, offset + len)` of data fragment
/// `index` hold file data and must be fetched; the rest are zeros (past
/// `valid_bytes`, or past `encoded_bytes` where nothing is stored).
pub fn readable_bytes(
    cfg: &StripeConfig,
    entry: &StripeEntry,
    index: usize,
    offset: u32,
    len: u32,
) -> u32 {
    let limit = entry.valid_bytes.min(entry.encoded_bytes) as u64;
    let start = index as u64 * cfg.unit_bytes as u64 + offset as u64;
    limit.saturating_sub(start).min(len as u64) as u32
}

/// A piece of a file byte range that falls inside one stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripePiece {
    pub stripe: u64,
    /// Offset inside the stripe's data (0..k*unit).
    pub offset: u32,
    pub len_bytes: u32,
    /// Offset of the piece inside the caller's buffer for the whole range.
    pub buf_offset: usize,
}

/// A piece of a file byte range that falls inside one data fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentPiece {
    pub stripe: u64,
    /// Data fragment index (0..k).
    pub index: usize,
    /// Offset inside the fragment (0..unit).
    pub offset: u32,
    pub len_bytes: u32,
    pub buf_offset: usize,
}

/// Splits `[offset, offset + len)` at stripe boundaries.
pub fn split_stripes(
    cfg: &StripeConfig,
    offset: u64,
    len_bytes: u64,
) -> Result<impl Iterator<Item = StripePiece>, StripeError> {
    let end = offset
        .checked_add(len_bytes)
        .ok_or(StripeError::Overflow { offset, len_bytes })?;
    let stripe_bytes = cfg.stripe_bytes();
    let mut pos = offset;
    Ok(std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let stripe = pos / stripe_bytes;
        let in_stripe = pos - stripe * stripe_bytes;
        let len = (stripe_bytes - in_stripe).min(end - pos);
        let piece = StripePiece {
            stripe,
            offset: in_stripe as u32,
            len_bytes: len as u32,
            buf_offset: (pos - offset) as usize,
        };
        pos += len;
        Some(piece)
    }))
}

/// Splits a piece of one stripe at data-fragment (unit) boundaries.
pub fn split_fragments(
    cfg: &StripeConfig,
    piece: StripePiece,
) -> impl Iterator<Item = FragmentPiece> {
    let unit = cfg.unit_bytes;
    let end = piece.offset + piece.len_bytes;
    let mut pos = piece.offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let index = pos / unit;
        let in_fragment = pos - index * unit;
        let len = (unit - in_fragment).min(end - pos);
        let out = FragmentPiece {
            stripe: piece.stripe,
            index: index as usize,
            offset: in_fragment,
            len_bytes: len,
            buf_offset: piece.buf_offset + (pos - piece.offset) as usize,
        };
        pos += len;
        Some(out)
    })
}

/// Splits `[offset, offset + len)` into per-stripe, per-data-fragment pieces.
pub fn split_range(
    cfg: &StripeConfig,
    offset: u64,
    len_bytes: u64,
) -> Result<impl Iterator<Item = FragmentPiece> + '_, StripeError> {
    Ok(split_stripes(cfg, offset, len_bytes)?.flat_map(move |p| split_fragments(cfg, p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: u32 = 1 << 20;

    fn cfg(k: u8, m: u8, unit_bytes: u32) -> StripeConfig {
        StripeConfig { k, m, unit_bytes }
    }

    fn entry(encoded_bytes: u32, valid_bytes: u32) -> StripeEntry {
        StripeEntry {
            stripe: 0,
            generation: 1,
            encoded_bytes,
            valid_bytes,
            crcs: vec![0; 6],
        }
    }

    /// Stored data fragments of a stripe holding `bytes` bytes: their
    /// lengths add up to `bytes`, and only the last one may be short.
    #[test]
    fn fragment_lengths_at_edge_sizes() {
        let c = cfg(4, 2, UNIT);
        let sizes = [
            0u64,
            1,
            4095,
            4096,
            UNIT as u64 - 1,
            UNIT as u64,
            4 * UNIT as u64,
        ];
        for size in sizes {
            let encoded = size as u32;
            let lens: Vec<u32> = (0..4)
                .map(|i| data_fragment_bytes(&c, encoded, i))
                .collect();
            assert_eq!(
                lens.iter().map(|&l| l as u64).sum::<u64>(),
                size,
                "size {size}"
            );
            let stored = lens.iter().filter(|&&l| l > 0).count();
            assert_eq!(stored as u64, size.div_ceil(UNIT as u64), "size {size}");
            for w in lens.windows(2) {
                assert!(w[0] >= w[1]);
                if w[1] > 0 {
                    assert_eq!(w[0], UNIT);
                }
            }
            let parity = parity_fragment_bytes(&c, encoded);
            assert_eq!(parity, lens[0], "parity as long as the first data fragment");
            assert_eq!(fragment_bytes(&c, encoded, 5), parity);
        }
        assert_eq!(data_fragment_bytes(&c, 1, 0), 1);
        assert_eq!(data_fragment_bytes(&c, 1, 1), 0);
        assert_eq!(data_fragment_bytes(&c, UNIT + 1, 1), 1);
        assert_eq!(parity_fragment_bytes(&c, 0), 0);
    }

    /// Splitting `[0, size)` covers every byte exactly once, in order, and
    /// puts each byte where the systematic layout says.
    #[test]
    fn split_covers_edge_sizes() {
        let c = cfg(4, 2, UNIT);
        let unit = UNIT as u64;
        for size in [
            0,
            1,
            4095,
            4096,
            unit - 1,
            unit,
            4 * unit + 1,
            37 * unit + 7,
        ] {
            let mut next = 0u64;
            for p in split_range(&c, 0, size).unwrap() {
                assert_eq!(p.buf_offset as u64, next);
                let file_offset = p.stripe * 4 * unit + p.index as u64 * unit + p.offset as u64;
                assert_eq!(file_offset, next, "size {size}: {p:?}");
                assert!(p.index < 4 && p.offset as u64 + p.len_bytes as u64 <= unit);
                assert!(p.len_bytes > 0);
                next += p.len_bytes as u64;
            }
            assert_eq!(next, size);
        }
        let pieces: Vec<_> = split_range(&c, 0, 37 * unit + 7).unwrap().collect();
        assert_eq!(pieces.len(), 38);
        assert_eq!(pieces.last().unwrap().stripe, 9);
        assert_eq!(pieces.last().unwrap().index, 1);
        assert_eq!(pieces.last().unwrap().len_bytes, 7);
    }

    #[test]
    fn split_unaligned_range() {
        let c = cfg(2, 1, 10);
        // bytes 15..47: stripe 0 [15,20) frag 1; stripe 1 [20,30) frag 0,
        // [30,40) frag 1; stripe 2 [40,47) frag 0.
        let got: Vec<_> = split_range(&c, 15, 32)
            .unwrap()
            .map(|p| (p.stripe, p.index, p.offset, p.len_bytes, p.buf_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 1, 5, 5, 0),
                (1, 0, 0, 10, 5),
                (1, 1, 0, 10, 15),
                (2, 0, 0, 7, 25)
            ]
        );
        let stripes: Vec<_> = split_stripes(&c, 15, 32)
            .unwrap()
            .map(|p| (p.stripe, p.offset, p.len_bytes))
            .collect();
        assert_eq!(stripes, vec![(0, 15, 5), (1, 0, 20), (2, 0, 7)]);
        assert!(split_range(&c, u64::MAX, 2).is_err());
    }

    #[test]
    fn readable_bytes_masks_valid_and_encoded() {
        let c = cfg(4, 2, 100);
        // 250 bytes encoded, truncated to 120 valid.
        let e = entry(250, 120);
        assert_eq!(readable_bytes(&c, &e, 0, 0, 100), 100);
        assert_eq!(readable_bytes(&c, &e, 1, 0, 100), 20);
        assert_eq!(readable_bytes(&c, &e, 1, 20, 50), 0);
        assert_eq!(readable_bytes(&c, &e, 2, 0, 100), 0);
        // Valid beyond encoded (never written past it): encoded bounds.
        let e = entry(150, 400);
        assert_eq!(readable_bytes(&c, &e, 1, 10, 90), 40);
        assert_eq!(readable_bytes(&c, &e, 3, 0, 100), 0);
        let e = entry(0, 0);
        assert_eq!(readable_bytes(&c, &e, 0, 0, 1), 0);
    }

    #[test]
    fn validation() {
        assert!(validate_config(&StripeConfig::DEFAULT).is_ok());
        assert!(validate_config(&cfg(0, 2, 10)).is_err());
        assert!(validate_config(&cfg(4, 0, 10)).is_err());
        assert!(validate_config(&cfg(4, 2, 0)).is_err());
        assert!(validate_config(&cfg(200, 2, FRAGMENT_BYTES_MAX)).is_err());
        let c = cfg(4, 2, 100);
        assert!(validate_entry(&c, &entry(400, 400)).is_ok());
        assert!(validate_entry(&c, &entry(401, 400)).is_err());
        assert_eq!(
            validate_entry(&c, &entry(300, 301)),
            Err(StripeError::ValidAboveEncoded {
                stripe: 0,
                valid_bytes: 301,
                encoded_bytes: 300
            })
        );
        let mut e = entry(10, 10);
        e.crcs.pop();
        assert!(validate_entry(&c, &e).is_err());
    }

    #[test]
    fn stripe_index_math() {
        let c = cfg(4, 2, UNIT);
        assert_eq!(stripe_of(&c, 0), 0);
        assert_eq!(stripe_of(&c, 4 * UNIT as u64 - 1), 0);
        assert_eq!(stripe_of(&c, 4 * UNIT as u64), 1);
        assert_eq!(stripe_start(&c, 3), 12 * UNIT as u64);
    }
}
