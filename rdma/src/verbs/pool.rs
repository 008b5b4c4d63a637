//! A bounded pool of registered buffers: one page-aligned allocation,
//! registered once with the device (pinning is costly, so never per
//! request), cut into equal slots. A request borrows a slot for its bulk
//! bytes and waits when all are lent, so memory stays bounded however many
//! requests are in flight.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::AccessFlags;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::VerbsError;

/// Alignment of the pool's allocation (and, slots being multiples of it,
/// of every slot).
const ALIGN_BYTES: usize = 4096;

pub struct BufferPool {
    base: NonNull<u8>,
    layout: Layout,
    slot_bytes: usize,
    free: Mutex<Vec<usize>>,
    available: Arc<Semaphore>,
    /// `None` only in unit tests, which need no device.
    region: Option<Arc<MemoryRegion>>,
}

// SAFETY: the allocation is owned by the pool and only reached through
// slots, each lent to one holder at a time.
unsafe impl Send for BufferPool {}
unsafe impl Sync for BufferPool {}

impl BufferPool {
    /// Allocates `slots` slots of `slot_bytes` (rounded up to 4 KiB) and
    /// registers them with `pd` for local writes and remote reads and
    /// writes. A registration refused by the memlock limit says so.
    pub fn register(
        pd: &Arc<ProtectionDomain>,
        slot_bytes: usize,
        slots: usize,
    ) -> Result<Arc<Self>, VerbsError> {
        let mut pool = Self::allocate(slot_bytes, slots)?;
        let total_bytes = pool.layout.size();
        // SAFETY: the allocation lives as long as the pool, which holds
        // the region and drops it (deregistering) before freeing.
        let region = unsafe {
            pd.reg_mr(
                pool.base.as_ptr() as usize,
                total_bytes,
                AccessFlags::LocalWrite | AccessFlags::RemoteWrite | AccessFlags::RemoteRead,
            )
        }
        .map_err(|e| VerbsError::Register {
            total_bytes,
            message: format!("{e} (is RLIMIT_MEMLOCK, `ulimit -l`, below {total_bytes} bytes?)"),
        })?;
        pool.region = Some(region);
        Ok(Arc::new(pool))
    }

    /// A pool with no registration (keys 0): for tests of the pool itself.
    pub fn unregistered(slot_bytes: usize, slots: usize) -> Result<Arc<Self>, VerbsError> {
        Ok(Arc::new(Self::allocate(slot_bytes, slots)?))
    }

    fn allocate(slot_bytes: usize, slots: usize) -> Result<Self, VerbsError> {
        let slot_bytes = slot_bytes.max(1).next_multiple_of(ALIGN_BYTES);
        let bad = || VerbsError::Register {
            total_bytes: slot_bytes.saturating_mul(slots),
            message: "bad pool size".into(),
        };
        if slots == 0 {
            return Err(bad());
        }
        let total_bytes = slot_bytes.checked_mul(slots).ok_or_else(bad)?;
        let layout = Layout::from_size_align(total_bytes, ALIGN_BYTES).map_err(|_| bad())?;
        // SAFETY: the layout's size is non-zero.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or_else(bad)?;
        Ok(Self {
            base,
            layout,
            slot_bytes,
            free: Mutex::new((0..slots).rev().collect()),
            available: Arc::new(Semaphore::new(slots)),
            region: None,
        })
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Slots not lent right now.
    pub fn idle_slots(&self) -> usize {
        self.available.available_permits()
    }

    /// Borrows a slot, waiting while all are lent.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = self
            .available
            .clone()
            .acquire_owned()
            .await
            .expect("the pool never closes its semaphore");
        let index = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .expect("a permit always has a free slot");
        Slot {
            pool: self.clone(),
            index,
            _permit: permit,
        }
    }

    fn keys(&self) -> (u32, u32) {
        self.region
            .as_ref()
            .map_or((0, 0), |r| (r.lkey(), r.rkey()))
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // Deregister before the memory goes.
        self.region = None;
        // SAFETY: allocated in `allocate` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// One borrowed slot; back to the pool on drop. Holders that let a remote
/// peer touch it (RDMA READ or WRITE) must keep it until that peer can no
/// longer do so: until the operation completed or its queue pair is gone.
pub struct Slot {
    pool: Arc<BufferPool>,
    index: usize,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    pub fn capacity(&self) -> usize {
        self.pool.slot_bytes
    }

    /// Address of the slot's first byte (what a remote peer is told).
    pub fn addr(&self) -> u64 {
        self.ptr() as u64
    }

    pub fn lkey(&self) -> u32 {
        self.pool.keys().0
    }

    pub fn rkey(&self) -> u32 {
        self.pool.keys().1
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: index < slots, so the offset stays inside the allocation.
        unsafe {
            self.pool
                .base
                .as_ptr()
                .add(self.index * self.pool.slot_bytes)
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the slot is lent to this holder alone.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.pool.slot_bytes) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.pool.slot_bytes) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.index);
        // The permit drops after this, so a waiter finds the index free.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn slots_are_disjoint_aligned_and_bounded() {
        let pool = BufferPool::unregistered(10_000, 3).unwrap();
        assert_eq!(pool.slot_bytes(), 12_288);
        let mut a = pool.acquire().await;
        let mut b = pool.acquire().await;
        let c = pool.acquire().await;
        assert_eq!(pool.idle_slots(), 0);
        let mut addrs = [a.addr(), b.addr(), c.addr()];
        addrs.sort();
        assert!(addrs.windows(2).all(|w| w[1] - w[0] >= 12_288));
        assert!(addrs.iter().all(|a| a % 4096 == 0));
        a.as_mut_slice().fill(1);
        b.as_mut_slice().fill(2);
        assert!(a.as_slice().iter().all(|&x| x == 1));
        assert!(b.as_slice().iter().all(|&x| x == 2));
        // A fourth borrower waits until one is returned.
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire().await.addr() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        let freed = b.addr();
        drop(b);
        assert_eq!(waiter.await.unwrap(), freed);
        assert_eq!(pool.idle_slots(), 1);
    }

    #[test]
    fn an_empty_pool_is_refused() {
        assert!(BufferPool::unregistered(4096, 0).is_err());
    }
}
