//! Sequential readahead for files no plan names: per open inode, a window
//! that doubles while reads stay sequential.

/// Readahead works in chunks of this size (one erasure-coding unit at the
/// default config), so its entries line up with later reads.
pub(crate) const READAHEAD_CHUNK_BYTES: u64 = 1 << 20;

/// Per-open-inode readahead state (no plan).
#[derive(Debug)]
pub(crate) struct Readahead {
    last_end: u64,
    window_bytes: u64,
    issued_to: u64,
}

impl Default for Readahead {
    fn default() -> Self {
        Self {
            last_end: u64::MAX,
            window_bytes: 0,
            issued_to: 0,
        }
    }
}

impl Readahead {
    /// After a read of `[offset, end)` of a file of `size` bytes: the range
    /// to fetch ahead, when reads are sequential (the window doubles up to
    /// `window_bytes_max`); the caller then says how far it got with
    /// [`Self::issued`].
    pub fn after_read(
        &mut self,
        offset: u64,
        end: u64,
        size: u64,
        window_bytes_max: u64,
    ) -> Option<(u64, u64)> {
        let sequential = self.last_end == offset && offset > 0;
        self.last_end = end;
        if !sequential {
            self.window_bytes = 0;
            self.issued_to = 0;
            return None;
        }
        self.window_bytes =
            (self.window_bytes * 2).clamp(READAHEAD_CHUNK_BYTES, window_bytes_max.max(1));
        let from = self.issued_to.max(end);
        let to = end.saturating_add(self.window_bytes).min(size);
        if from >= to {
            self.issued_to = from;
            return None;
        }
        Some((from, to))
    }

    /// Fetches were issued up to `to`.
    pub fn issued(&mut self, to: u64) {
        self.issued_to = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_doubles_while_reads_are_sequential() {
        const MIB: u64 = 1 << 20;
        let mut ra = Readahead::default();
        assert_eq!(ra.after_read(0, MIB, 64 * MIB, 8 * MIB), None);
        assert_eq!(
            ra.after_read(MIB, 2 * MIB, 64 * MIB, 8 * MIB),
            Some((2 * MIB, 3 * MIB))
        );
        ra.issued(3 * MIB);
        assert_eq!(
            ra.after_read(2 * MIB, 3 * MIB, 64 * MIB, 8 * MIB),
            Some((3 * MIB, 5 * MIB))
        );
        ra.issued(5 * MIB);
        // A jump starts over.
        assert_eq!(ra.after_read(40 * MIB, 41 * MIB, 64 * MIB, 8 * MIB), None);
        // Never past the end of the file.
        assert_eq!(ra.after_read(41 * MIB, 42 * MIB, 42 * MIB, 8 * MIB), None);
    }
}
