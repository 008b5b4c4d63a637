//! One metad client's request latency against a running cluster: N reads
//! (GetAttr of the root, a Lookup that finds nothing) and N writes (Mkdir,
//! then Rmdir of the same names), one at a time, reported as percentiles;
//! then the same N Mkdirs with CONCURRENCY in flight (throughput and
//! latency under load: how well concurrent writes share commits).
//!
//! With PAUSE_US, the one-at-a-time mkdirs are also run that many
//! microseconds apart (the gap a client leaves between its creates), to
//! see whether a write waits for what the one before left in flight.
//!
//!   cargo run --release -p torchfs-metad --example latency -- 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 300 16 [PAUSE_US]

use std::time::Instant;

use anyhow::{bail, Context, Result};
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{MetaRequest, ROOT_INO};

fn report(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{what}: p10 {:.2} p50 {:.2} p90 {:.2} p99 {:.2} mean {mean:.2} ms",
        at(0.1),
        at(0.5),
        at(0.9),
        at(0.99)
    );
}

async fn timed(client: &MetaClient, reqs: impl Iterator<Item = MetaRequest>) -> Vec<f64> {
    timed_apart(client, reqs, 0).await
}

async fn timed_apart(
    client: &MetaClient,
    reqs: impl Iterator<Item = MetaRequest>,
    pause_us: u64,
) -> Vec<f64> {
    let mut ms = Vec::new();
    for req in reqs {
        if pause_us > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(pause_us)).await;
        }
        let started = Instant::now();
        // A Lookup of a missing name answers ENOENT: still one round trip.
        let _ = client.call(req).await;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    ms
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(addrs) = args.next() else {
        bail!("usage: latency HOST:PORT[,HOST:PORT...] [REQUESTS] [CONCURRENCY] [PAUSE_US]");
    };
    let n: usize = match args.next() {
        Some(s) => s.parse().context("REQUESTS must be a number")?,
        None => 300,
    };
    let concurrency: usize = match args.next() {
        Some(s) => s.parse().context("CONCURRENCY must be a number")?,
        None => 16,
    };
    let pause_us: u64 = match args.next() {
        Some(s) => s.parse().context("PAUSE_US must be a number")?,
        None => 0,
    };
    let client = MetaClient::new(
        addrs.split(',').map(str::to_owned).collect(),
        MetaClientOptions::default(),
    )?;
    client.call(MetaRequest::GetAttr { ino: ROOT_INO }).await?;
    let tag = std::process::id();
    let name = move |i: usize| format!("latency-{tag}-{i}");
    report(
        "getattr",
        timed(
            &client,
            (0..n).map(|_| MetaRequest::GetAttr { ino: ROOT_INO }),
        )
        .await,
    );
    report(
        "lookup (missing)",
        timed(
            &client,
            (0..n).map(|i| MetaRequest::Lookup {
                parent: ROOT_INO,
                name: name(i),
            }),
        )
        .await,
    );
    report(
        "mkdir",
        timed(
            &client,
            (0..n).map(|i| MetaRequest::Mkdir {
                parent: ROOT_INO,
                name: name(i),
                mode: 0o755,
                umask: 0,
                uid: 0,
                gid: 0,
            }),
        )
        .await,
    );
    report(
        "rmdir",
        timed(
            &client,
            (0..n).map(|i| MetaRequest::Rmdir {
                parent: ROOT_INO,
                name: name(i),
            }),
        )
        .await,
    );
    if pause_us > 0 {
        let mkdir = |i: usize| MetaRequest::Mkdir {
            parent: ROOT_INO,
            name: name(i + n),
            mode: 0o755,
            umask: 0,
            uid: 0,
            gid: 0,
        };
        report(
            &format!("mkdir, {pause_us} us apart"),
            timed_apart(&client, (0..n).map(mkdir), pause_us).await,
        );
    }
    let started = Instant::now();
    let ms = concurrent_mkdirs(&client, n, concurrency, &format!("latency-{tag}-c")).await;
    let seconds = started.elapsed().as_secs_f64();
    report(&format!("mkdir, {concurrency} in flight"), ms);
    println!(
        "mkdir, {concurrency} in flight: {:.0} ops/s",
        n as f64 / seconds
    );
    Ok(())
}

/// `n` Mkdirs named `prefix-i`, `concurrency` at a time; their latencies.
async fn concurrent_mkdirs(
    client: &MetaClient,
    n: usize,
    concurrency: usize,
    prefix: &str,
) -> Vec<f64> {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| {
            let req = MetaRequest::Mkdir {
                parent: ROOT_INO,
                name: format!("{prefix}-{i}"),
                mode: 0o755,
                umask: 0,
                uid: 0,
                gid: 0,
            };
            async move {
                let started = Instant::now();
                let _ = client.call(req).await;
                started.elapsed().as_secs_f64() * 1e3
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}
