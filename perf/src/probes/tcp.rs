//! Loopback TCP limit: one stream of 1 MiB writes from a client thread to a
//! server thread that reads and discards, for a few seconds. This is the
//! path every byte between torchfs's client and its storage nodes takes on
//! one host (iperf3 measures the same; this needs nothing installed).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::TARGET;
use crate::ctx::{Ctx, Metric};

const BUFFER_BYTES: usize = 1 << 20;

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let metric = Metric::new("loopback", "tcp 1 stream", "MB/s");
    let seconds = (ctx.config.probe_seconds as f64 / 2.0).max(0.5);
    for round in 0..ctx.config.repeats {
        ctx.check_interrupted()?;
        match stream(Duration::from_secs_f64(seconds)) {
            Ok(bytes_s) => {
                ctx.sample(&metric, TARGET, bytes_s / 1e6);
                ctx.log(format!(
                    "[probe] loopback tcp round {}: {:.0} MB/s",
                    round + 1,
                    bytes_s / 1e6
                ));
            }
            Err(e) => ctx.failed(&metric, TARGET, &e),
        }
    }
    Ok(())
}

/// Bytes per second received over one loopback connection.
fn stream(duration: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind loopback")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; BUFFER_BYTES];
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
                return Ok((total, elapsed));
            }
            first.get_or_insert_with(Instant::now);
            total += n as u64;
        }
    });
    let mut conn = TcpStream::connect(addr).context("connect loopback")?;
    conn.set_nodelay(true)?;
    let buf = crate::data::pattern(BUFFER_BYTES, 3);
    let started = Instant::now();
    while started.elapsed() < duration {
        conn.write_all(&buf)?;
    }
    drop(conn);
    let (bytes, elapsed) = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(bytes as f64 / elapsed.as_secs_f64().max(1e-9))
}
