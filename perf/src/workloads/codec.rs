//! Erasure code: encode and decode throughput of torchfs's codec
//! (`torchfs_client::codec::ReedSolomon`, k=4 m=2) against raw ISA-L calls
//! doing the same arithmetic with everything that can be precomputed
//! precomputed: the gap is the codec's own overhead (argument checks,
//! pointer vectors, and for decode the per-call matrix inversion and table
//! expansion). One core, buffers touched before timing. GB/s counts data
//! bytes (k fragments) per second.

use std::os::raw::{c_int, c_uchar};
use std::time::Instant;

use anyhow::{bail, Result};
use torchfs_client::codec::ReedSolomon;

use super::Workload;
use crate::ctx::{Ctx, Metric};
use crate::data::pattern;
use crate::targets::Target;

// Links the static ISA-L that defines the symbols below.
use isal_sys as _;

extern "C" {
    fn gf_gen_cauchy1_matrix(a: *mut c_uchar, m: c_int, k: c_int);
    fn gf_invert_matrix(input: *mut c_uchar, out: *mut c_uchar, n: c_int) -> c_int;
    fn ec_init_tables(k: c_int, rows: c_int, a: *mut c_uchar, gftbls: *mut c_uchar);
    fn ec_encode_data(
        len: c_int,
        k: c_int,
        rows: c_int,
        gftbls: *mut c_uchar,
        data: *mut *mut c_uchar,
        coding: *mut *mut c_uchar,
    );
}

pub struct Codec;

const NAME: &str = "codec";
pub const RAW_TARGET: &str = "isa-l";
const K: usize = 4;
const M: usize = 2;
/// Fragments lost in the decode figure: two data fragments, the worst case
/// torchfs meets (k=4 m=2 with m nodes down).
const LOST: [usize; 2] = [0, 1];

impl Workload for Codec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "Reed-Solomon k=4 m=2 encode/decode GB/s: torchfs's codec vs raw ISA-L"
    }

    fn run(&self, ctx: &mut Ctx, _targets: &mut [Box<dyn Target>]) -> Result<()> {
        let len = ctx.config.codec_fragment_bytes as usize;
        if len > c_int::MAX as usize {
            bail!("--codec-fragment-bytes {len} is too large for ISA-L");
        }
        let seconds = ctx.config.codec_seconds;
        let encode = Metric::new(NAME, "encode k4m2", "GB/s").bounded(&[RAW_TARGET], &[]);
        let decode = Metric::new(NAME, "decode 2 lost k4m2", "GB/s").bounded(&[RAW_TARGET], &[]);
        let mut bench = Bench::new(len)?;
        for round in 0..ctx.config.repeats {
            ctx.check_interrupted()?;
            let results = [
                (
                    &encode,
                    "torchfs",
                    bench.timed(seconds, Bench::encode_torchfs)?,
                ),
                (
                    &encode,
                    RAW_TARGET,
                    bench.timed(seconds, Bench::encode_raw)?,
                ),
                (
                    &decode,
                    "torchfs",
                    bench.timed(seconds, Bench::decode_torchfs)?,
                ),
                (
                    &decode,
                    RAW_TARGET,
                    bench.timed(seconds, Bench::decode_raw)?,
                ),
            ];
            let mut said = Vec::new();
            for (metric, target, gbs) in results {
                ctx.sample(metric, target, gbs);
                said.push(format!("{} {target} {gbs:.1} GB/s", metric.name));
            }
            ctx.log(format!("[{NAME}] round {}: {}", round + 1, said.join(", ")));
        }
        bench.check()?;
        Ok(())
    }
}

struct Bench {
    len: usize,
    rs: ReedSolomon,
    /// k data then m parity fragments.
    fragments: Vec<Vec<u8>>,
    encode_tables: Vec<u8>,
    decode_tables: Vec<u8>,
    /// The k fragments a decode reads: the first k not lost.
    sources: Vec<usize>,
    /// Scratch for rebuilt fragments (raw path) and a full copy (torchfs path).
    rebuilt: Vec<Vec<u8>>,
    work: Vec<Vec<u8>>,
}

impl Bench {
    fn new(len: usize) -> Result<Bench> {
        let rs = ReedSolomon::new(K, M)?;
        let mut fragments: Vec<Vec<u8>> = (0..K + M).map(|i| pattern(len, i as u64 + 1)).collect();
        let mut matrix = vec![0u8; (K + M) * K];
        let mut encode_tables = vec![0u8; 32 * K * M];
        // SAFETY: sizes as ISA-L documents: (k+m) x k matrix, 32*k*m tables.
        unsafe {
            gf_gen_cauchy1_matrix(matrix.as_mut_ptr(), (K + M) as c_int, K as c_int);
            ec_init_tables(
                K as c_int,
                M as c_int,
                matrix[K * K..].as_mut_ptr(),
                encode_tables.as_mut_ptr(),
            );
        }
        let sources: Vec<usize> = (0..K + M).filter(|i| !LOST.contains(i)).take(K).collect();
        let mut chosen: Vec<u8> = sources
            .iter()
            .flat_map(|&s| matrix[s * K..(s + 1) * K].to_vec())
            .collect();
        let mut inverse = vec![0u8; K * K];
        // SAFETY: both K x K.
        if unsafe { gf_invert_matrix(chosen.as_mut_ptr(), inverse.as_mut_ptr(), K as c_int) } != 0 {
            bail!("decode matrix singular");
        }
        // Lost fragments are data fragments: their rows of the inverse.
        let mut rows: Vec<u8> = LOST
            .iter()
            .flat_map(|&l| inverse[l * K..(l + 1) * K].to_vec())
            .collect();
        let mut decode_tables = vec![0u8; 32 * K * LOST.len()];
        // SAFETY: rows is LOST.len() x K; tables 32 * K * rows.
        unsafe {
            ec_init_tables(
                K as c_int,
                LOST.len() as c_int,
                rows.as_mut_ptr(),
                decode_tables.as_mut_ptr(),
            )
        };
        let mut bench = Bench {
            len,
            rs,
            fragments: Vec::new(),
            encode_tables,
            decode_tables,
            sources,
            rebuilt: vec![vec![1u8; len]; LOST.len()],
            work: fragments.clone(),
        };
        // Real parity, so decodes rebuild real data.
        {
            let (data, parity) = fragments.split_at_mut(K);
            let data: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let mut parity: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
            bench.rs.encode(&data, &mut parity)?;
        }
        bench.work = fragments.clone();
        bench.fragments = fragments;
        Ok(bench)
    }

    /// Runs `op` repeatedly for about `seconds`; data GB/s.
    fn timed(&mut self, seconds: f64, op: fn(&mut Bench) -> Result<()>) -> Result<f64> {
        op(self)?; // warm-up: tables and buffers in cache, pages touched
        let started = Instant::now();
        let mut calls = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            op(self)?;
            calls += 1;
        }
        let bytes = calls as f64 * (K * self.len) as f64;
        Ok(bytes / started.elapsed().as_secs_f64() / 1e9)
    }

    fn encode_torchfs(&mut self) -> Result<()> {
        let (data, parity) = self.work.split_at_mut(K);
        let data: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let mut parity: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
        self.rs.encode(&data, &mut parity)?;
        Ok(())
    }

    fn encode_raw(&mut self) -> Result<()> {
        let mut ptrs: Vec<*mut u8> = self.work.iter_mut().map(|f| f.as_mut_ptr()).collect();
        let (data, parity) = ptrs.split_at_mut(K);
        // SAFETY: k sources and m outputs of `len` bytes each, distinct.
        unsafe {
            ec_encode_data(
                self.len as c_int,
                K as c_int,
                M as c_int,
                self.encode_tables.as_mut_ptr(),
                data.as_mut_ptr(),
                parity.as_mut_ptr(),
            )
        };
        Ok(())
    }

    fn decode_torchfs(&mut self) -> Result<()> {
        let present: Vec<bool> = (0..K + M).map(|i| !LOST.contains(&i)).collect();
        let mut views: Vec<&mut [u8]> = self.work.iter_mut().map(|f| f.as_mut_slice()).collect();
        self.rs.reconstruct(&mut views, &present, &LOST)?;
        Ok(())
    }

    fn decode_raw(&mut self) -> Result<()> {
        let mut sources: Vec<*mut u8> = self
            .sources
            .iter()
            .map(|&s| self.fragments[s].as_ptr() as *mut u8)
            .collect();
        let mut outputs: Vec<*mut u8> = self.rebuilt.iter_mut().map(|f| f.as_mut_ptr()).collect();
        // SAFETY: k sources (only read) and 2 distinct outputs, `len` each.
        unsafe {
            ec_encode_data(
                self.len as c_int,
                K as c_int,
                LOST.len() as c_int,
                self.decode_tables.as_mut_ptr(),
                sources.as_mut_ptr(),
                outputs.as_mut_ptr(),
            )
        };
        Ok(())
    }

    /// Both paths must have produced the right bytes, or the figures mean
    /// nothing.
    fn check(&self) -> Result<()> {
        for (i, &l) in LOST.iter().enumerate() {
            if self.rebuilt[i] != self.fragments[l] || self.work[l] != self.fragments[l] {
                bail!("decode produced wrong bytes for fragment {l}");
            }
        }
        if self.work[K..] != self.fragments[K..] {
            bail!("encode produced wrong parity");
        }
        Ok(())
    }
}
