//! The `MetaError` a response carries instead of a reply, both ways.

use crate::meta::MetaError;
use crate::metadata_capnp as mc;

use super::{enum_field, text, Result};

pub(super) fn write_error(e: &MetaError, mut b: mc::error::Builder<'_>) {
    match e {
        MetaError::Fs { errno, message } => {
            b.set_kind(mc::ErrorKind::Fs);
            b.set_errno(*errno);
            b.set_message(message.as_str());
        }
        MetaError::NotLeader {
            leader_id,
            leader_addr,
        } => {
            b.set_kind(mc::ErrorKind::NotLeader);
            // The schema has no optional here: 0 is not a valid voter id
            // (openraft ids are user-chosen, torchfs reserves 0 for "none").
            b.set_leader_id(leader_id.unwrap_or(0));
            b.set_leader_addr(leader_addr.as_deref().unwrap_or(""));
        }
        MetaError::Unavailable(m) => {
            b.set_kind(mc::ErrorKind::Unavailable);
            b.set_message(m.as_str());
        }
        MetaError::Invalid(m) => {
            b.set_kind(mc::ErrorKind::Invalid);
            b.set_message(m.as_str());
        }
        MetaError::SessionExpired { client_id, seq } => {
            b.set_kind(mc::ErrorKind::SessionExpired);
            b.set_client_id(*client_id);
            b.set_seq(*seq);
        }
    }
}

pub(super) fn read_error(r: mc::error::Reader<'_>) -> Result<MetaError> {
    let message = text(r.get_message(), "error.message")?;
    let kind = enum_field(r.get_kind(), "error.kind")?;
    Ok(match kind {
        mc::ErrorKind::Fs => MetaError::Fs {
            errno: r.get_errno(),
            message,
        },
        mc::ErrorKind::NotLeader => {
            let id = r.get_leader_id();
            let addr = text(r.get_leader_addr(), "error.leaderAddr")?;
            MetaError::NotLeader {
                leader_id: (id != 0).then_some(id),
                leader_addr: (!addr.is_empty()).then_some(addr),
            }
        }
        mc::ErrorKind::Unavailable => MetaError::Unavailable(message),
        mc::ErrorKind::Invalid => MetaError::Invalid(message),
        mc::ErrorKind::SessionExpired => MetaError::SessionExpired {
            client_id: r.get_client_id(),
            seq: r.get_seq(),
        },
    })
}
