//! This client's lease with metad: which inodes it holds open, so that a
//! file unlinked while open here stays readable and writable until its
//! last close (metad keeps it as an orphan while the lease lists it), and
//! the deletion of garbage (reclaimed orphans) that metad hands out.
//!
//! One `KeepAlive` per `keep_alive_ms` lists every open inode; `Open`
//! covers the gap between an open and the next keep-alive. Garbage is
//! deleted by a task of its own, one batch at a time, so that a slow
//! storage node never delays a renewal past the lease; what it deleted is
//! reported in the next keep-alive.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use torchfs_proto::meta::{Garbage, Ino, MetaReply, MetaRequest};
use torchfs_rdma::Transport;

use super::client::{Client, Inner};
use super::error::unexpected;
use super::meta::MetaService;
use super::sync::lock;

/// Garbage deletion state shared by the keep-alive loop and its deleter.
#[derive(Default)]
pub(crate) struct GarbageWork {
    /// A batch is being deleted: further garbage is left to be handed out
    /// again (metad re-hands what is not reported within a lease).
    busy: bool,
    /// Deleted since the last keep-alive went out.
    deleted: Vec<Ino>,
}

/// Renews the lease until the last `Client` is dropped.
pub(crate) async fn keep_alive_loop<M: MetaService, T: Transport>(inner: Weak<Inner<M, T>>) {
    let work = Arc::new(Mutex::new(GarbageWork::default()));
    let mut period = match inner.upgrade() {
        Some(i) => Duration::from_millis(i.config.keep_alive_ms.max(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let client = Client { inner: strong };
        let deleted = std::mem::take(&mut lock(&work).deleted);
        let req = MetaRequest::KeepAlive {
            client_id: client.inner.meta.lease_id,
            open: client.inner.handles.open_inos(),
            deleted: deleted.clone(),
        };
        match client.inner.meta.call_background(req).await {
            Ok(MetaReply::KeepAlive { lease_ms, garbage }) => {
                // Renew at least three times per lease, whatever we were told.
                let most = Duration::from_millis((lease_ms / 3).max(10));
                let asked = Duration::from_millis(client.inner.config.keep_alive_ms.max(10));
                period = asked.min(most);
                client.delete_garbage(&work, garbage);
            }
            Ok(other) => {
                tracing::warn!("keep-alive: {}", unexpected("KeepAlive", other));
                lock(&work).deleted.extend(deleted);
            }
            Err(e) => {
                tracing::warn!("keep-alive failed (open files may lose their lease): {e}");
                // Reported again next time; metad drops garbage idempotently.
                lock(&work).deleted.extend(deleted);
            }
        }
    }
}

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Deletes the fragments of `garbage` in the background unless a batch
    /// is already being deleted.
    fn delete_garbage(&self, work: &Arc<Mutex<GarbageWork>>, garbage: Vec<Garbage>) {
        if garbage.is_empty() {
            return;
        }
        {
            let mut w = lock(work);
            if w.busy {
                return;
            }
            w.busy = true;
        }
        let client = self.clone();
        let work = work.clone();
        tokio::spawn(async move {
            for g in garbage {
                client
                    .delete_entries(g.ino, g.layout.config, g.layout.stripes)
                    .await;
                lock(&work).deleted.push(g.ino);
            }
            lock(&work).busy = false;
        });
    }
}

#[cfg(test)]
mod tests {
    use torchfs_proto::meta::{Garbage, Ino, ROOT_INO};

    use crate::core::tests::{client, create_file, FakeMeta, FakeStore};
    use crate::core::{NewMode, Owner};

    /// Waits (up to 2 s) until metad saw a keep-alive that satisfies `ok`.
    async fn keep_alive_where(meta: &FakeMeta, ok: impl Fn(&[Ino], &[Ino]) -> bool) {
        for _ in 0..200 {
            {
                let st = meta.0.lock().unwrap();
                if st.keep_alives.iter().any(|(_, o, d)| ok(o, d)) {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "no such keep-alive: {:?}",
            meta.0.lock().unwrap().keep_alives
        );
    }

    #[tokio::test]
    async fn open_files_are_leased_and_handed_garbage_is_deleted_and_reported() {
        let (meta, store) = (FakeMeta::new(8), FakeStore::default());
        let c = client(&meta, &store, 8).await;
        let attr = create_file(&c, "f").await;
        let fh = c.open(attr.ino, true, false).await.unwrap();
        let id = c.inner.meta.lease_id;
        assert_ne!(id, 0);
        assert_eq!(meta.0.lock().unwrap().opened, vec![(id, attr.ino)]);
        keep_alive_where(&meta, |open, _| open == [attr.ino]).await;

        c.write(fh, 0, &[7u8; 300]).await.unwrap();
        c.release(fh).await.unwrap();
        let stored = store.count();
        assert!(stored > 0);
        meta.0.lock().unwrap().keep_alives.clear();
        keep_alive_where(&meta, |open, _| open.is_empty()).await;

        // metad reclaimed the (unlinked, closed) file: hand it out.
        let layout = meta.0.lock().unwrap().files[&attr.ino].1.clone();
        meta.0.lock().unwrap().garbage.push(Garbage {
            ino: attr.ino,
            layout,
        });
        keep_alive_where(&meta, |_, deleted| deleted == [attr.ino]).await;
        assert_eq!(store.count(), 0, "every fragment of the garbage deleted");
        assert!(meta
            .0
            .lock()
            .unwrap()
            .keep_alives
            .iter()
            .all(|(c, ..)| *c == id));
    }

    #[tokio::test]
    async fn create_open_is_one_metad_call_and_leases_the_new_file() {
        let (meta, store) = (FakeMeta::new(8), FakeStore::default());
        let c = client(&meta, &store, 8).await;
        let mode = NewMode {
            mode: 0o644,
            umask: 0,
        };
        let calls = || c.inner.meta.requests();
        let before = calls();
        let (attr, fh) = c
            .create_open(ROOT_INO, "g", mode, Owner { uid: 5, gid: 6 }, true, false)
            .await
            .unwrap();
        assert_eq!(calls() - before, 1, "create and open in one call");
        assert_eq!((attr.uid, attr.gid, attr.size), (5, 6, 0));
        let id = c.inner.meta.lease_id;
        assert_eq!(meta.0.lock().unwrap().opened, vec![(id, attr.ino)]);
        keep_alive_where(&meta, |open, _| open == [attr.ino]).await;

        c.write(fh, 0, &[9u8; 1000]).await.unwrap();
        c.release(fh).await.unwrap();
        assert_eq!(meta.0.lock().unwrap().files[&attr.ino].0.size, 1000);
        // The new name is cached: a lookup costs no call.
        let before = calls();
        assert_eq!(c.lookup(ROOT_INO, "g").await.unwrap().ino, attr.ino);
        assert_eq!(calls(), before);

        // O_CREAT|O_TRUNC of a new name (`open(.., "w")`): still one call,
        // there is nothing to truncate.
        let before = calls();
        let (_, fh) = c
            .create_open(ROOT_INO, "h", mode, Owner { uid: 5, gid: 6 }, false, true)
            .await
            .unwrap();
        assert_eq!(calls() - before, 1, "no truncate of a new file");
        c.release(fh).await.unwrap();
        // ...but a file that exists with data (another client made it
        // meanwhile) is cut.
        let (again, fh) = c
            .create_open(ROOT_INO, "g", mode, Owner { uid: 5, gid: 6 }, false, true)
            .await
            .unwrap();
        assert_eq!(again.ino, attr.ino);
        c.release(fh).await.unwrap();
        assert_eq!(meta.0.lock().unwrap().files[&attr.ino].0.size, 0);
    }
}
