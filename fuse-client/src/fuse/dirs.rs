//! Open directory streams: each `opendir` handle keeps the listing read at
//! its first `readdir`, so offsets stay stable while the directory changes.

use std::collections::HashMap;
use std::sync::Mutex;

use fuser::{INodeNo, ReplyDirectory};
use torchfs_proto::meta::DirEntry;

use super::attr::file_type;

#[derive(Default)]
pub(super) struct DirStreams {
    listings: Mutex<HashMap<u64, Vec<DirEntry>>>,
}

impl DirStreams {
    pub(super) fn insert(&self, fh: u64, entries: Vec<DirEntry>) {
        self.lock().insert(fh, entries);
    }

    pub(super) fn remove(&self, fh: u64) {
        self.lock().remove(&fh);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<DirEntry>>> {
        // A panicked holder cannot leave the map half-updated (single
        // insert/remove), so a poisoned lock is still usable.
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills `reply` from position `offset`: 0 is ".", 1 is "..", then the
    /// entries; each entry's offset is the position of the next one.
    pub(super) fn fill(&self, fh: u64, ino: u64, offset: u64, mut reply: ReplyDirectory) {
        let listings = self.lock();
        let Some(entries) = listings.get(&fh) else {
            drop(listings);
            return reply.error(fuser::Errno::EBADF);
        };
        let mut position = offset;
        while position < 2 {
            // ".." gets this directory's inode; the kernel fixes it up.
            let name = if position == 0 { "." } else { ".." };
            if reply.add(INodeNo(ino), position + 1, fuser::FileType::Directory, name) {
                return reply.ok();
            }
            position += 1;
        }
        let start = (position - 2) as usize;
        for (i, entry) in entries.iter().enumerate().skip(start) {
            let next = i as u64 + 3;
            if reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name) {
                break;
            }
        }
        drop(listings);
        reply.ok();
    }
}
