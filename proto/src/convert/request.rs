//! The [`WriteId`] beside a `Request`'s union ([`write_write_id`],
//! [`read_write_id`]); the union itself is generated (`ops`).

use crate::meta::WriteId;
use crate::metadata_capnp as mc;

use super::Result;

/// Sets the `writeId` of a `Request` (beside its union, which
/// [`super::write_request`] fills).
pub fn write_write_id(id: &WriteId, b: mc::request::Builder<'_>) {
    let mut w = b.init_write_id();
    w.set_client_id(id.client_id);
    w.set_seq(id.seq);
    w.set_lowest_outstanding_seq(id.lowest_outstanding_seq);
}

/// The `writeId` of a `Request`; None when absent (a read, or a client
/// older than sessions). Its values are checked by [`WriteId::check`] where
/// it is used, not here.
pub fn read_write_id(r: mc::request::Reader<'_>) -> Result<Option<WriteId>> {
    if !r.has_write_id() {
        return Ok(None);
    }
    let w = r.get_write_id()?;
    Ok(Some(WriteId {
        client_id: w.get_client_id(),
        seq: w.get_seq(),
        lowest_outstanding_seq: w.get_lowest_outstanding_seq(),
    }))
}
