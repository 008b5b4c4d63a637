//! Responses: [`write_response`] and [`read_response`], a reply or the
//! `MetaError` (`error`) a response carries instead, around the generated
//! reply converters (`ops`).

use crate::meta::{ChangedDir, MetaError, MetaReply};
use crate::metadata_capnp as mc;

use super::error::write_error;
use super::ops::{read_reply, write_reply};
use super::types::{read_attr, write_attr};
use super::Result;

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
