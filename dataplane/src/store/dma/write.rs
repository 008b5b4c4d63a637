//! The write side of [`DmaStore`]: a put as a fragment file or as a log
//! record, and freeing what a put replaced or a delete removed.

use super::*;
use crate::io::DiskError;

/// Marks a key as being written at its final name until dropped (also
/// when the put is cancelled).
pub(super) struct Writing<'a> {
    keys: &'a RefCell<HashSet<FragmentKey>>,
    key: FragmentKey,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.keys.borrow_mut().remove(&self.key);
    }
}

impl<I: DiskIo + 'static> DmaStore<I> {
    async fn sync_dir(&self) -> io::Result<()> {
        let open = self.dir_handle.borrow().clone();
        let dir = match open {
            Some(dir) => dir,
            None => {
                let dir = Rc::new(self.io.open_dir(&self.dir).await?);
                *self.dir_handle.borrow_mut() = Some(dir.clone());
                dir
            }
        };
        self.io.sync_dir(&dir).await
    }

    /// Stores `image` (the data behind room for `header`) as the file of
    /// `key`, durable with its name (see the module docs).
    pub(super) async fn put_file(
        &self,
        key: FragmentKey,
        header: &FragmentHeader,
        mut image: I::WriteBuf,
    ) -> Result<(), DiskError> {
        header.encode(image.as_mut());
        // A new key is written at its final name: there is nothing there to
        // keep whole until the new file is (a put that was never
        // acknowledged may leave a torn file, which the CRCs catch on read),
        // and it saves a rename per put. A key being replaced, or one
        // another put is writing right now, goes through a temp file.
        let final_path = self.path_of(&key);
        let is_file = matches!(self.index.borrow().get(&key), Some(Place::File { .. }));
        let direct = !is_file && self.writing.borrow_mut().insert(key);
        let _writing = direct.then(|| Writing {
            keys: &self.writing,
            key,
        });
        let target = if direct {
            final_path.clone()
        } else {
            let seq = self.temp_seq.get();
            self.temp_seq.set(seq + 1);
            self.dir.join(format!("{key}{TEMP_MARK}.{seq}"))
        };
        if let Err(source) = self.io.write_new(&target, image).await {
            let _ = self.io.remove(&target).await;
            return Err(DiskError {
                op: "write",
                source,
            });
        }
        if !direct {
            if let Err(source) = self.io.rename(&target, &final_path).await {
                let _ = self.io.remove(&target).await;
                return Err(DiskError {
                    op: "rename",
                    source,
                });
            }
        }
        // Bookkeeping first: the new file is in place whatever the
        // directory sync says.
        let bytes = format::file_bytes(header.length_bytes);
        let old = self.index.borrow_mut().insert(key, Place::File { bytes });
        self.account(old.map_or(0, |p| p.bytes()), bytes);
        let synced = self
            .dir_sync
            .run(|| self.sync_dir())
            .await
            .map_err(DiskError::of("sync directory"));
        // A record of the key would win over this file at the next start:
        // it is punched durably before the put is answered. Also when the
        // directory sync failed, as the index points at the file now: a
        // record left there would come back at the next start over the
        // file and over whatever the key holds by then. Not synced then:
        // after a crash the record may come back, a whole fragment.
        if let Some(old @ Place::Log { .. }) = old {
            let dropped = self.drop_old(key, old, synced.is_ok()).await;
            synced?;
            return dropped;
        }
        synced
    }

    /// Stores `image` as a record of the log, durable (see [`super::log`]).
    pub(super) async fn put_logged(
        &self,
        key: FragmentKey,
        header: &FragmentHeader,
        image: I::WriteBuf,
    ) -> Result<(), DiskError> {
        let (seq, offset) = self.log.append(header, image).await?;
        let bytes = format::file_bytes(header.length_bytes);
        let old = self
            .index
            .borrow_mut()
            .insert(key, Place::Log { seq, offset, bytes });
        self.account(old.map_or(0, |p| p.bytes()), bytes);
        if let Some(old) = old {
            // The new record is stored and wins over the old one at the
            // next start: failing to free the old one only wastes space.
            if let Err(e) = self.drop_old(key, old, false).await {
                tracing::warn!("fragment {key}: {}: {}", e.op, e.source);
            }
        }
        Ok(())
    }

    /// Frees `old`, where `key` was stored and the index no longer points.
    /// `durable`: a log record cannot come back after a crash.
    pub(super) async fn drop_old(
        &self,
        key: FragmentKey,
        old: Place,
        durable: bool,
    ) -> Result<(), DiskError> {
        match old {
            Place::File { .. } => match self.io.remove(&self.path_of(&key)).await {
                Err(source) if source.kind() != io::ErrorKind::NotFound => Err(DiskError {
                    op: "remove",
                    source,
                }),
                _ => Ok(()),
            },
            Place::Log { seq, offset, bytes } => self
                .log
                .release(seq, offset, bytes, durable)
                .await
                .map_err(DiskError::of("punch log record")),
        }
    }
}
