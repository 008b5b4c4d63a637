//! SQLite in rollback-journal mode (journal_mode=DELETE) with 4 writer
//! processes (2 per mount): every commit a writer saw acknowledged is in
//! the database, read from either mount, and it passes
//! `PRAGMA integrity_check`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::common::{fuse_available, serial, TestCluster};
use crate::{start_together, verdict, wait_all, Proc, WRITER_TIMEOUT};

/// Transactions per SQLite writer process (a few hundred each; 4
/// writers, 2 per mount).
const SQLITE_TXNS: usize = 200;

/// The rows each SQLite writer saw committed (its "ok <i>" lines).
fn sqlite_acked(p: &Proc) -> Vec<u64> {
    std::fs::read_to_string(&p.out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ok ")?.trim().parse().ok())
        .collect()
}

/// `sqlite_db.py check` on `db`, against the commits each writer saw
/// acknowledged: problems, one a line.
fn check_sqlite(
    tc: &TestCluster,
    name: &str,
    db: &Path,
    acked: &[Vec<u64>],
) -> Result<Vec<String>> {
    let mut p = Proc::spawn(
        tc,
        name,
        "sqlite_db.py",
        &["check".into(), db.display().to_string()],
    )?;
    let failed = wait_all(std::slice::from_mut(&mut p), Duration::from_secs(120));
    ensure!(failed.is_empty(), "sqlite check: {}", failed.join("\n"));
    let out: serde_json::Value = serde_json::from_str(p.stdout().trim())
        .with_context(|| format!("sqlite check printed {:?}", p.stdout()))?;
    let mut problems = Vec::new();
    if let Some(e) = out["error"].as_str() {
        problems.push(format!("error: {e}"));
    }
    let integrity: Vec<&str> = out["integrity"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if integrity != ["ok"] {
        let shown: Vec<&str> = integrity.iter().take(10).copied().collect();
        problems.push(format!(
            "PRAGMA integrity_check: {} lines: {shown:?}",
            integrity.len()
        ));
    }
    if out["journal_mode"].as_str() != Some("delete") {
        problems.push(format!("journal_mode {}", out["journal_mode"]));
    }
    let (mut present, mut lost, mut dups) = (0, 0, 0);
    let mut per_writer = Vec::new();
    for (w, acked) in acked.iter().enumerate() {
        let mut rows: Vec<u64> = out["rows"][w.to_string()]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        let all = rows.len();
        rows.dedup();
        dups += all - rows.len();
        present += rows.len();
        let missing: Vec<u64> = acked
            .iter()
            .filter(|i| rows.binary_search(i).is_err())
            .copied()
            .collect();
        lost += missing.len();
        per_writer.push(format!(
            "w{w} {} rows ({} acknowledged, {} of them missing{})",
            rows.len(),
            acked.len(),
            missing.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(", e.g. {:?}", &missing[..missing.len().min(5)])
            }
        ));
    }
    let want = acked.len() * SQLITE_TXNS;
    if present != want || lost > 0 || dups > 0 {
        problems.push(format!(
            "{present} of {want} rows present, {lost} acknowledged commits missing, \
             {dups} duplicate rows; {}",
            per_writer.join("; ")
        ));
    }
    Ok(problems)
}

#[test]
fn sqlite_on_two_mounts_keeps_every_commit() -> Result<()> {
    if !fuse_available("sqlite_on_two_mounts_keeps_every_commit") {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let tc = TestCluster::start()?;
    let b = tc.mount_another("mnt-b")?;
    let (on_a, on_b) = (tc.path("db.sqlite"), b.path("db.sqlite"));
    let mut init = Proc::spawn(
        &tc,
        "sqlite-init",
        "sqlite_db.py",
        &["init".into(), on_a.display().to_string()],
    )?;
    let failed = wait_all(std::slice::from_mut(&mut init), Duration::from_secs(60));
    ensure!(
        failed.is_empty(),
        "creating the database: {}",
        failed.join("\n")
    );
    let mut procs = Vec::new();
    for w in 0..4 {
        let path = if w < 2 { &on_a } else { &on_b };
        procs.push(Proc::spawn(
            &tc,
            &format!("sqlite-w{w}"),
            "sqlite_db.py",
            &[
                "write".into(),
                path.display().to_string(),
                w.to_string(),
                SQLITE_TXNS.to_string(),
            ],
        )?);
    }
    let t = Instant::now();
    start_together(&mut procs)?;
    let failed = wait_all(&mut procs, WRITER_TIMEOUT);
    eprintln!("sqlite: writers done in {:?}", t.elapsed());
    let acked: Vec<Vec<u64>> = procs.iter().map(sqlite_acked).collect();
    for (p, a) in procs.iter().zip(&acked) {
        eprintln!("sqlite: {}: {} commits acknowledged", p.name, a.len());
    }
    let mut problems = Vec::new();
    for (mount, path) in [("A", &on_a), ("B", &on_b)] {
        let found = check_sqlite(&tc, &format!("sqlite-check-{mount}"), path, &acked)?;
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("checked on mount {mount}: {p}")),
        );
    }
    verdict(
        &format!(
            "SQLite (journal_mode=DELETE) with 4 writer processes (2 per mount), \
             {SQLITE_TXNS} transactions each: commits lost or database damaged"
        ),
        &problems,
        &failed,
        &[("A", &tc.mount_log()), ("B", &b.log)],
    )?;
    eprintln!("sqlite: {:?}", t0.elapsed());
    Ok(())
}
