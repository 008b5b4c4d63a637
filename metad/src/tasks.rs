//! The RPC side's task set, shared by the listener (`service`) and the
//! peer connections (`network`).

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

use tokio::task::JoinSet;

/// The RPC side's local tasks (listener, connections, peer calls): stopping
/// aborts them all, which closes every connection and the port.
#[derive(Clone, Default)]
pub(crate) struct LocalTasks(Rc<RefCell<JoinSet<()>>>);

impl LocalTasks {
    /// Spawns `task` on the current `LocalSet`.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        let mut set = self.0.borrow_mut();
        // Reap finished tasks so the set stays as small as what runs.
        while set.try_join_next().is_some() {}
        set.spawn_local(task);
    }

    /// Aborts every task and waits until all are gone.
    pub(crate) async fn stop(&self) {
        let mut set = std::mem::take(&mut *self.0.borrow_mut());
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}
