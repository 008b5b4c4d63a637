//! Group commit of a shard's directory fsync. Every put creates its file
//! (or renames a temp file over an old one) and may be acknowledged only
//! once that name is durable, which takes an fsync of the directory; one
//! fsync makes durable every create and rename done before it started, so
//! puts in flight on a shard share one instead of queueing one each behind
//! the journal.
//!
//! [`GroupSync::run`] is called after the caller's create or rename. If no sync is
//! running, the caller leads one. Otherwise it waits: a sync already
//! running may have started before its rename, so it cannot count. When
//! the running sync ends, its leader hands the lead to the first waiter,
//! whose sync then covers every waiter queued so far, and tells each the
//! outcome. A failed sync fails every put it covered (the rename may not
//! be durable, and after a failed fsync the kernel may have dropped the
//! dirty state, so a retry proves nothing). Single-threaded (one per shard
//! executor); a leader whose future is dropped mid-sync passes the lead on
//! in its drop, and the waiters it had taken find no answer and queue again.

use std::cell::RefCell;
use std::future::Future;
use std::io;

use futures::channel::oneshot;

/// What a waiter is told.
enum Turn {
    /// The sync that covered it ended so.
    Done(Result<(), SyncFailure>),
    /// Lead the next sync.
    Lead,
}

/// An `io::Error` that can be handed to every put a failed sync covered.
#[derive(Clone, Debug)]
struct SyncFailure {
    raw_os_error: Option<i32>,
    kind: io::ErrorKind,
    message: String,
}

impl SyncFailure {
    fn of(e: &io::Error) -> Self {
        Self {
            raw_os_error: e.raw_os_error(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    fn to_io(&self) -> io::Error {
        match self.raw_os_error {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

#[derive(Default)]
struct State {
    /// A sync is running or its lead is being handed over.
    leading: bool,
    /// Callers whose rename finished after the running sync started.
    waiting: Vec<oneshot::Sender<Turn>>,
    /// Syncs run and callers served (figures for tests and tuning).
    syncs: u64,
    callers: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct GroupSync {
    state: RefCell<State>,
}

/// Hands the lead on when a leader finishes or is dropped mid-sync.
struct Leading<'a>(&'a GroupSync);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.borrow_mut();
        while !state.waiting.is_empty() {
            let next = state.waiting.remove(0);
            if next.send(Turn::Lead).is_ok() {
                return;
            }
        }
        state.leading = false;
    }
}

impl GroupSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns once a run of `sync` that started after this call began has
    /// succeeded (or with the error of the one that failed). Call it after
    /// the change `sync` must make durable.
    pub async fn run<F, Fut>(&self, sync: F) -> io::Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        self.state.borrow_mut().callers += 1;
        loop {
            let turn = {
                let mut state = self.state.borrow_mut();
                if state.leading {
                    let (tx, rx) = oneshot::channel();
                    state.waiting.push(tx);
                    Some(rx)
                } else {
                    state.leading = true;
                    None
                }
            };
            if let Some(turn) = turn {
                match turn.await {
                    Ok(Turn::Done(result)) => return result.map_err(|f| f.to_io()),
                    Ok(Turn::Lead) => {}
                    // Our leader was dropped before it synced: queue again.
                    Err(oneshot::Canceled) => continue,
                }
            }
            return self.lead(&sync).await;
        }
    }

    async fn lead<F, Fut>(&self, sync: &F) -> io::Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        let _leading = Leading(self);
        // Everyone queued so far renamed before this sync starts.
        let covered = std::mem::take(&mut self.state.borrow_mut().waiting);
        let result = sync().await;
        self.state.borrow_mut().syncs += 1;
        let shared = result.as_ref().map(|_| ()).map_err(SyncFailure::of);
        for waiter in covered {
            let _ = waiter.send(Turn::Done(shared.clone()));
        }
        result
    }

    /// Syncs run so far.
    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Calls to [`Self::run`] so far.
    pub fn callers(&self) -> u64 {
        self.state.borrow().callers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    fn run_local<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .expect("start a glommio executor")
            .join()
            .expect("executor ran");
    }

    /// A fake directory: "renames" count up; a sync makes durable what
    /// was renamed when it started, after a delay.
    #[derive(Default)]
    struct FakeDir {
        renamed: Cell<u64>,
        durable: Cell<u64>,
        fail_next: Cell<bool>,
    }

    impl FakeDir {
        async fn sync(&self) -> io::Result<()> {
            let covers = self.renamed.get();
            glommio::timer::sleep(Duration::from_millis(5)).await;
            if self.fail_next.replace(false) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.durable.set(self.durable.get().max(covers));
            Ok(())
        }
    }

    #[test]
    fn puts_in_flight_share_syncs_and_each_is_covered() {
        run_local(|| async {
            let dir = Rc::new(FakeDir::default());
            let group = Rc::new(GroupSync::new());
            let tasks: Vec<_> = (0..40u64)
                .map(|i| {
                    let (dir, group) = (dir.clone(), group.clone());
                    glommio::spawn_local(async move {
                        glommio::timer::sleep(Duration::from_millis(i % 7)).await;
                        dir.renamed.set(dir.renamed.get() + 1);
                        let mine = dir.renamed.get();
                        group.run(|| dir.sync()).await.unwrap();
                        assert!(dir.durable.get() >= mine, "put {i} acknowledged early");
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            assert_eq!(group.callers(), 40);
            assert!(group.syncs() < 20, "{} syncs for 40 puts", group.syncs());
        });
    }

    #[test]
    fn a_failed_sync_fails_the_puts_it_covered_only() {
        run_local(|| async {
            let dir = Rc::new(FakeDir::default());
            let group = Rc::new(GroupSync::new());
            dir.fail_next.set(true);
            let tasks: Vec<_> = (0..3)
                .map(|_| {
                    let (dir, group) = (dir.clone(), group.clone());
                    glommio::spawn_local(async move {
                        dir.renamed.set(dir.renamed.get() + 1);
                        group.run(|| dir.sync()).await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await);
            }
            // The first leads the failing sync; the two queued behind it
            // share the next one, which succeeds.
            let errno = results[0].as_ref().err().and_then(|e| e.raw_os_error());
            assert_eq!(errno, Some(libc::EIO), "{results:?}");
            assert!(results[1..].iter().all(Result::is_ok), "{results:?}");
            assert_eq!(group.syncs(), 2);
        });
    }

    #[test]
    fn a_leader_dropped_mid_sync_hands_the_lead_on() {
        run_local(|| async {
            let dir = Rc::new(FakeDir::default());
            let group = Rc::new(GroupSync::new());
            let leader = {
                let (dir, group) = (dir.clone(), group.clone());
                glommio::spawn_local(async move {
                    dir.renamed.set(dir.renamed.get() + 1);
                    let _ = group.run(|| dir.sync()).await;
                })
            };
            glommio::timer::sleep(Duration::from_millis(1)).await;
            let follower = {
                let (dir, group) = (dir.clone(), group.clone());
                glommio::spawn_local(async move {
                    dir.renamed.set(dir.renamed.get() + 1);
                    let mine = dir.renamed.get();
                    group.run(|| dir.sync()).await.unwrap();
                    assert!(dir.durable.get() >= mine);
                })
            };
            glommio::timer::sleep(Duration::from_millis(1)).await;
            leader.cancel().await;
            follower.await;
            assert!(!group.state.borrow().leading);
        });
    }
}
