//! The bytes the block writers write and how a file of them is checked: a
//! block's every 8-byte word names its seed and its own place in the file
//! (`scripts/mwlib.py` writes the same), so a block written at the wrong
//! offset, zeros, or an older round's bytes are told apart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::Rng;

use crate::{KIB, MIB, UNIT};

/// The seed sits above bit 40 of each 8-byte word (see `block_bytes`).
const WORD_BITS: u32 = 40;

/// The bytes of a block, as `mwlib.block_bytes` writes them: the 8-byte
/// little-endian word at absolute offset 8w holds `(seed << 40) | w`.
fn block_bytes(off: u64, len: u64, seed: u64) -> Vec<u8> {
    let (w0, w1) = (off / 8, (off + len).div_ceil(8));
    let mut raw = Vec::with_capacity(((w1 - w0) * 8) as usize);
    for w in w0..w1 {
        raw.extend_from_slice(&((seed << WORD_BITS) | w).to_le_bytes());
    }
    let skip = (off - w0 * 8) as usize;
    raw[skip..skip + len as usize].to_vec()
}

/// One block of the shared file: `[off, off+len)`, its content's seed and
/// which writer process writes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub(crate) off: u64,
    pub(crate) len: u64,
    pub(crate) seed: u64,
    pub(crate) writer: usize,
}

/// Cuts `[0, total)` into blocks of 4 KiB to 2 MiB (log-uniform, so many
/// are small; lengths and offsets often not 4 KiB aligned), no cut on a
/// 1 MiB boundary (so every unit and stripe boundary lies inside a block),
/// each given to a random writer of `writers`.
pub(crate) fn partition(
    rng: &mut StdRng,
    total: u64,
    writers: usize,
    seed_base: u64,
) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut off = 0;
    while off < total {
        let exp: f64 = rng.gen_range(0.0..9.0);
        let mut len = ((4 * KIB) as f64 * exp.exp2()) as u64;
        if rng.gen_bool(0.5) {
            len = len.next_multiple_of(4 * KIB);
        }
        len = len.clamp(4 * KIB, 2 * MIB);
        if (off + len).is_multiple_of(UNIT) {
            len += rng.gen_range(1..2048);
        }
        if total - off < len + 4 * KIB {
            len = total - off;
        }
        blocks.push(Block {
            off,
            len,
            seed: seed_base + blocks.len() as u64,
            writer: rng.gen_range(0..writers),
        });
        off += len;
    }
    blocks
}

/// What the file holds where a block `[at.., ..end)` went wrong: zeros, a
/// known seed's bytes (another round's, or another block's moved here), or
/// other bytes. Looks at the first whole 8-byte word from `at` on.
fn what_is_there(got: &[u8], at: u64, end: u64, seeds: &HashMap<u64, String>) -> String {
    let mut w = at.div_ceil(8);
    if w * 8 + 8 > end {
        w = at / 8;
    }
    let Some(word) = got.get((w * 8) as usize..(w * 8 + 8) as usize) else {
        return "nothing: past the end of the file".into();
    };
    let v = u64::from_le_bytes(word.try_into().unwrap());
    if v == 0 {
        return "zeros".into();
    }
    let (seed, place) = (v >> WORD_BITS, v & ((1 << WORD_BITS) - 1));
    match seeds.get(&seed) {
        Some(who) if place == w => format!("the bytes of {who}"),
        Some(who) => format!("bytes of {who} from offset {}", place * 8),
        None => format!("other bytes (word {v:#018x})"),
    }
}

/// Reads `path` (a fresh open) and checks every block and the size; the
/// problems found, one line each, after a summary line.
pub(crate) fn check_blocks(
    path: &Path,
    blocks: &[Block],
    seeds: &HashMap<u64, String>,
    writer_names: &[String],
) -> Result<Vec<String>> {
    let got = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let total = blocks.last().map_or(0, |b| b.off + b.len);
    let mut problems = Vec::new();
    if got.len() as u64 != total {
        problems.push(format!(
            "size {} bytes, the last block ends at {total}",
            got.len()
        ));
    }
    let mut bad_blocks = 0;
    let mut bad_bytes = 0u64;
    let mut per_writer = vec![(0usize, 0usize); writer_names.len()];
    let mut lines = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        per_writer[b.writer].1 += 1;
        let want = block_bytes(b.off, b.len, b.seed);
        let have = got
            .get(b.off as usize..((b.off + b.len) as usize).min(got.len()))
            .unwrap_or(&[]);
        // Compared by 8-byte words of the file (so zeros do not match the
        // zero bytes of the pattern): the bytes of the words that differ.
        let (mut wrong, mut first) = (0u64, None);
        let mut j = 0u64;
        while j < b.len {
            let end = ((b.off + j) / 8 * 8 + 8 - b.off).min(b.len);
            let (s, e) = (j as usize, end as usize);
            if have.get(s..e) != Some(&want[s..e]) {
                wrong += end - j;
                first.get_or_insert(j);
            }
            j = end;
        }
        let Some(first) = first else {
            continue;
        };
        bad_blocks += 1;
        bad_bytes += wrong;
        per_writer[b.writer].0 += 1;
        lines.push(format!(
            "  block {i} [{}, {}) len {} of {}: {wrong} bytes wrong from +{first}, \
             where the file holds {}",
            b.off,
            b.off + b.len,
            b.len,
            writer_names[b.writer],
            what_is_there(&got, b.off + first, b.off + b.len, seeds)
        ));
    }
    if bad_blocks > 0 {
        let mut summary = format!(
            "{bad_blocks} of {} blocks wrong ({bad_bytes} of {total} bytes); \
             per writer (wrong/blocks):",
            blocks.len()
        );
        for (name, (bad, all)) in writer_names.iter().zip(&per_writer) {
            let _ = write!(summary, " {name} {bad}/{all}");
        }
        problems.push(summary);
        let more = lines.len().saturating_sub(20);
        problems.extend(lines.into_iter().take(20));
        if more > 0 {
            problems.push(format!("  ... and {more} more blocks"));
        }
    }
    Ok(problems)
}
