//! File data through a real mount: every size the issue names, overwrites,
//! appends and truncation, read back byte-identical.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::Result;
use common::*;

#[test]
fn files_of_every_size_read_back_identical() -> Result<()> {
    if !fuse_available("files_of_every_size_read_back_identical") {
        return Ok(());
    }
    let _serial = serial();
    let tc = TestCluster::start()?;
    let files = write_sized_files(&tc, "sizes")?;
    for (path, data) in &files {
        assert_eq!(
            std::fs::metadata(path)?.len(),
            data.len() as u64,
            "{}",
            path.display()
        );
    }
    tc.drop_caches();
    check_files(&files)?;
    Ok(())
}

#[test]
fn overwrite_append_and_truncate() -> Result<()> {
    if !fuse_available("overwrite_append_and_truncate") {
        return Ok(());
    }
    let _serial = serial();
    let tc = TestCluster::start()?;
    let path = tc.path("edit.bin");
    let mut want = pattern((6 << 20) + 333, 11);
    std::fs::write(&path, &want)?;

    // Overwrite across a unit boundary and a stripe boundary in place
    // (read-modify-write of committed stripes).
    let patch = pattern(3 << 20, 12);
    let at = (1 << 20) - 100;
    {
        let f = OpenOptions::new().write(true).open(&path)?;
        f.write_all_at(&patch, at as u64)?;
        f.sync_all()?;
    }
    want[at..at + patch.len()].copy_from_slice(&patch);
    tc.drop_caches();
    assert!(std::fs::read(&path)? == want, "overwrite");

    // Append past the end.
    {
        let mut f = OpenOptions::new().append(true).open(&path)?;
        let tail = pattern(70_000, 13);
        f.write_all(&tail)?;
        want.extend_from_slice(&tail);
    }
    tc.drop_caches();
    assert!(std::fs::read(&path)? == want, "append");

    // Shrink into the middle of a stripe, then grow again: the gap reads
    // as zeros, not as the old bytes.
    let cut = (4 << 20) + 5;
    {
        let f = OpenOptions::new().write(true).open(&path)?;
        f.set_len(cut as u64)?;
    }
    assert_eq!(std::fs::metadata(&path)?.len(), cut as u64);
    want.truncate(cut);
    {
        let mut f = OpenOptions::new().write(true).open(&path)?;
        f.seek(SeekFrom::Start((cut + 1000) as u64))?;
        f.write_all(b"end")?;
    }
    want.resize(cut + 1000, 0);
    want.extend_from_slice(b"end");
    tc.drop_caches();
    let mut got = Vec::new();
    std::fs::File::open(&path)?.read_to_end(&mut got)?;
    assert_eq!(got.len(), want.len());
    assert!(got == want, "truncate then extend");

    // O_TRUNC on open empties the file.
    std::fs::write(&path, b"short")?;
    assert_eq!(std::fs::read(&path)?, b"short");
    Ok(())
}
