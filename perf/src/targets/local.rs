//! The local-disk baseline: a plain directory, named after the filesystem
//! that holds it ("ext4" here), so the report says what it compared with.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{fresh_dir, Target};
use crate::model::{TargetInfo, TargetKind};

pub struct LocalDir {
    name: String,
    root: PathBuf,
    source: String,
    keep: bool,
}

impl LocalDir {
    pub fn setup(dir: &Path, keep: bool) -> Result<LocalDir> {
        fresh_dir(dir)?;
        let root = dir.canonicalize()?;
        let mount = super::mounts()?
            .into_iter()
            .filter(|m| root.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len());
        let (name, source) = match mount {
            Some(m) => (m.fs_type, m.source),
            None => ("local".into(), "unknown".into()),
        };
        Ok(LocalDir {
            name,
            root,
            source,
            keep,
        })
    }
}

impl Target for LocalDir {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> TargetKind {
        TargetKind::LocalDisk
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn info(&self) -> TargetInfo {
        let mut details = std::collections::BTreeMap::new();
        details.insert("device".into(), self.source.clone());
        TargetInfo {
            name: self.name.clone(),
            kind: self.kind(),
            path: self.root.display().to_string(),
            status: "ok".into(),
            details,
        }
    }

    fn teardown(&mut self) -> Result<()> {
        if !self.keep {
            std::fs::remove_dir_all(&self.root)?;
        }
        Ok(())
    }
}
