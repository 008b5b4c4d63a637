//! Responses: [`write_response`] and [`read_response`], the `MetaError` a
//! response may carry instead of a reply, around the generated reply
//! converters (`ops`).

use crate::meta::{ChangedDir, MetaError, MetaReply};
use crate::metadata_capnp as mc;

use super::ops::{read_reply, write_reply};
use super::types::{read_attr, write_attr};
use super::{enum_field, text, Result};

fn write_error(e: &MetaError, mut b: mc::error::Builder<'_>) {
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

/// Writes a reply or an error into an (empty) `Response` struct.
pub fn write_response(
    resp: &std::result::Result<MetaReply, MetaError>,
    mut b: mc::response::Builder<'_>,
) {
    match resp {
        Err(e) => write_error(e, b.init_error()),
        Ok(reply) => write_reply(reply, b.reborrow()),
    }
}

/// Reads a `Response`: the outer error is a malformed message, the inner
/// result is what metad answered.
pub fn read_response(
    r: mc::response::Reader<'_>,
) -> Result<std::result::Result<MetaReply, MetaError>> {
    read_reply(r)
}

/// Writes the directories a write changed beside its reply
/// (`Response.dirs`, `Response.dirsCtimeBefore`).
pub fn write_dirs(dirs: &[ChangedDir], mut b: mc::response::Builder<'_>) {
    if dirs.is_empty() {
        return;
    }
    let mut list = b.reborrow().init_dirs(dirs.len() as u32);
    for (i, d) in dirs.iter().enumerate() {
        write_attr(&d.attr, list.reborrow().get(i as u32));
    }
    if dirs.iter().all(|d| d.ctime_before_ns.is_some()) {
        let mut before = b.init_dirs_ctime_before(dirs.len() as u32);
        for (i, d) in dirs.iter().enumerate() {
            before.set(i as u32, d.ctime_before_ns.unwrap_or_default());
        }
    }
}

/// Reads `Response.dirs` and their ctimes before the change (empty when
/// absent; no ctimes from an older metad or when the lists disagree).
pub fn read_dirs(r: mc::response::Reader<'_>) -> Result<Vec<ChangedDir>> {
    if !r.has_dirs() {
        return Ok(Vec::new());
    }
    let attrs = r.get_dirs()?;
    let before = if r.has_dirs_ctime_before() {
        Some(r.get_dirs_ctime_before()?).filter(|b| b.len() == attrs.len())
    } else {
        None
    };
    attrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Ok(ChangedDir {
                attr: read_attr(a)?,
                ctime_before_ns: before.as_ref().map(|b| b.get(i as u32)),
            })
        })
        .collect()
}
