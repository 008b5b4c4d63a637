//! [`MemoryStore`]: fragments in memory. Used to isolate unit tests (of the
//! server, of the protocol) from the disk; passes the same conformance
//! suite as the disk store. It checks the whole fragment on every get,
//! which the contract allows (it only requires the bytes served).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use torchfs_proto::fragment::FragmentKey;

use super::{FragmentStore, Slice, StoreError};

struct Stored {
    data: Rc<[u8]>,
    crc32c: u32,
}

#[derive(Default)]
pub struct MemoryStore {
    fragments: RefCell<BTreeMap<FragmentKey, Stored>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Flips a bit of byte `at` of a stored fragment (tests of corruption).
    pub fn corrupt(&self, key: FragmentKey, at: usize) {
        if let Some(stored) = self.fragments.borrow_mut().get_mut(&key) {
            let mut bytes = stored.data.to_vec();
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 0x01;
            }
            stored.data = bytes.into();
        }
    }
}

impl FragmentStore for MemoryStore {
    type PutBuf = Vec<u8>;
    type GetBuf = Slice<Rc<[u8]>>;

    fn put_buffer(&self, length_bytes: u32) -> Vec<u8> {
        vec![0; length_bytes as usize]
    }

    async fn put(&self, key: FragmentKey, data: Vec<u8>, crc32c: u32) -> Result<(), StoreError> {
        let actual = crc32c::crc32c(&data);
        if actual != crc32c {
            return Err(StoreError::ChecksumMismatch {
                key,
                expected: crc32c,
                actual,
            });
        }
        self.fragments.borrow_mut().insert(
            key,
            Stored {
                data: data.into(),
                crc32c,
            },
        );
        Ok(())
    }

    async fn get(
        &self,
        key: FragmentKey,
        offset: u32,
        length: u32,
        expected_crc32c: u32,
    ) -> Result<Self::GetBuf, StoreError> {
        let fragments = self.fragments.borrow();
        let stored = fragments.get(&key).ok_or(StoreError::NotFound { key })?;
        let actual = crc32c::crc32c(&stored.data);
        if actual != stored.crc32c || actual != expected_crc32c {
            return Err(StoreError::ChecksumMismatch {
                key,
                expected: expected_crc32c,
                actual,
            });
        }
        let length_bytes = stored.data.len() as u32;
        if offset > length_bytes {
            return Err(StoreError::BadRange {
                key,
                offset,
                length_bytes,
            });
        }
        let end = (u64::from(offset) + u64::from(length)).min(u64::from(length_bytes)) as usize;
        Ok(Slice::new(stored.data.clone(), offset as usize, end))
    }

    async fn scrub(&self, key: FragmentKey) -> Result<(u32, u32), StoreError> {
        let fragments = self.fragments.borrow();
        let stored = fragments.get(&key).ok_or(StoreError::NotFound { key })?;
        let actual = crc32c::crc32c(&stored.data);
        if actual != stored.crc32c {
            return Err(StoreError::ChecksumMismatch {
                key,
                expected: stored.crc32c,
                actual,
            });
        }
        Ok((actual, stored.data.len() as u32))
    }

    async fn delete(&self, key: FragmentKey) -> Result<(), StoreError> {
        self.fragments
            .borrow_mut()
            .remove(&key)
            .map(drop)
            .ok_or(StoreError::NotFound { key })
    }

    fn list(&self) -> Vec<FragmentKey> {
        self.fragments.borrow().keys().copied().collect()
    }

    fn used_bytes(&self) -> u64 {
        self.fragments
            .borrow()
            .values()
            .map(|s| s.data.len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let store = Rc::new(MemoryStore::new());
        let s = store.clone();
        futures::executor::block_on(super::super::conformance::run(&*store, move |key, at| {
            s.corrupt(key, at)
        }));
    }
}
