//! Where the disk store keeps a fragment: its own file or a record of
//! the shard's fragment log (shared by the store and the log's start-up
//! walk).

/// Where a stored fragment is, and the bytes it takes there (header
/// block and padding included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The file `<key>.frag`.
    File { bytes: u64 },
    /// A record at `offset` of log segment `seq`.
    Log { seq: u64, offset: u64, bytes: u64 },
}

impl Place {
    pub fn bytes(&self) -> u64 {
        match self {
            Place::File { bytes } | Place::Log { bytes, .. } => *bytes,
        }
    }
}
