//! Repair and scrub of files (docs/ARCHITECTURE.md: Data path, repair):
//! the layout metad holds for a file, each stripe handed to the storage
//! client to check and rebuild in place. `torchfs repair` walks the tree.

use torchfs_proto::meta::Ino;
use torchfs_rdma::Transport;
use torchfs_storage_client::io::StripeRepair;

use super::{Client, ClientError, MetaService};

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Checks every stored fragment of file `ino` and rebuilds the missing
    /// or corrupt ones where the map places them. `verify_whole` reads each
    /// fragment whole (a scrub); otherwise only its existence and whole CRC
    /// are checked (after nodes were lost).
    pub async fn repair_file(
        &self,
        ino: Ino,
        verify_whole: bool,
    ) -> Result<StripeRepair, ClientError> {
        let (_, layout) = self.current_layout(ino).await?;
        let mut total = StripeRepair::default();
        for entry in &layout.stripes {
            let r = self
                .inner
                .storage
                .repair_stripe(ino, &layout.config, entry, verify_whole)
                .await?;
            total.checked += r.checked;
            total.rebuilt += r.rebuilt;
            total.rebuilt_bytes += r.rebuilt_bytes;
            total.failed += r.failed;
        }
        Ok(total)
    }
}
