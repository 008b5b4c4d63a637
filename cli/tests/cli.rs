//! The `torchfs` binary as a user meets it: `up` end to end, and clear
//! one-line errors for bad input.

mod common;

use std::process::{Command, Output};

use anyhow::Result;
use common::*;

fn torchfs(args: &[&str]) -> Result<Output> {
    Ok(Command::new(exe()).args(args).output()?)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn up_runs_the_demonstration_and_stops_cleanly() -> Result<()> {
    if !fuse_available("up_runs_the_demonstration_and_stops_cleanly") {
        return Ok(());
    }
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    // Below Linux's ephemeral range (32768+), so no test's free port lands here.
    let base: u16 = 27_400;
    let out = torchfs(&[
        "up",
        "--dir",
        dir.path().to_str().unwrap(),
        "--base-port",
        &base.to_string(),
        "--exit-after-demo",
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        stderr(&out)
    );
    assert!(stdout.contains("byte-identical"), "{stdout}");
    assert!(stdout.contains("6/6 nodes up"), "{stdout}");
    assert!(!is_mounted(&dir.path().join("mnt")), "left mounted");
    Ok(())
}

#[test]
fn bad_input_gets_one_clear_error() -> Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;

    let out = torchfs(&[
        "mount",
        "/nonexistent/torchfs-mnt",
        "--metad",
        "127.0.0.1:1",
    ])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    let out = torchfs(&["mount", "/proc", "--metad", "127.0.0.1:1"])?;
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));

    // A port in use.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let data = dir.path().join("m1");
    let out = torchfs(&[
        "metad",
        "--id",
        "1",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data.to_str().unwrap(),
        "--voters",
        &format!("1=127.0.0.1:{port}"),
    ])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&port.to_string()), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("in use"),
        "{}",
        stderr(&out)
    );

    // A storage node that cannot reach metad.
    let out = Command::new(exe())
        .args(["storage", "--node-id", "1", "--data-dir"])
        .arg(dir.path().join("s1"))
        .args(["--metad", "127.0.0.1:1", "--shards", "1"])
        .output()?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("metad"), "{}", stderr(&out));

    // A data dir that is not writable (a file in the way).
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x")?;
    let out = Command::new(exe())
        .args(["storage", "--node-id", "1", "--data-dir"])
        .arg(blocker.join("sub"))
        .args(["--metad", "127.0.0.1:1", "--shards", "1"])
        .output()?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sub"), "{}", stderr(&out));

    // Bad flags and config.
    let out = torchfs(&[
        "metad",
        "--id",
        "4",
        "--data-dir",
        "/tmp/x",
        "--voters",
        "1=127.0.0.1:7401",
    ])?;
    assert!(
        stderr(&out).contains("not among --voters"),
        "{}",
        stderr(&out)
    );
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[status\n")?;
    let out = torchfs(&["status", "--config", cfg.to_str().unwrap()])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.toml"), "{}", stderr(&out));

    // status with nothing running says so.
    let out = torchfs(&["status", "--metad", "127.0.0.1:1", "--timeout-ms", "500"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is it running"), "{}", stderr(&out));
    Ok(())
}
