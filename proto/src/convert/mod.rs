//! Conversions between the metadata domain types ([`crate::meta`]) and their
//! Cap'n Proto form (`schema/metadata.capnp`).
//!
//! Writers cannot fail (the domain types are always representable, except
//! list lengths beyond `u32`, which are clamped by the caller's limits long
//! before). Readers treat the message as untrusted input: an unknown enum
//! value, non-UTF-8 text, a missing required struct or an out-of-range number
//! gives a `capnp::Error` (naming the field where it helps), never a panic.
//!
//! Layout of the module:
//! - this file: the helpers every reader uses.
//! - `types`: the structs inside requests and replies (attributes, layouts,
//!   stripes, setattr, node info, cluster map and status).
//! - `ops`: [`write_request`] and [`read_request`], and the reply half of
//!   [`write_response`] and [`read_response`]: generated from the schema's
//!   unions, one arm per operation.
//! - `request`: the write id beside the request union ([`write_write_id`],
//!   [`read_write_id`]).
//! - `response`: [`write_response`] and [`read_response`] (replies and
//!   errors).

mod error;
mod ops;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod types;

use capnp::Error;

pub use ops::{read_request, write_request};
pub use request::{read_write_id, write_write_id};
pub use response::{read_dirs, read_response, write_dirs, write_response};
pub use types::{read_attr, write_attr};

type Result<T> = std::result::Result<T, Error>;

/// A required struct field was absent (a null pointer reads as defaults in
/// Cap'n Proto, which would silently turn into zeros).
fn need(present: bool, what: &str) -> Result<()> {
    if present {
        Ok(())
    } else {
        Err(Error::failed(format!("missing field `{what}`")))
    }
}

/// A required struct field: absent is an error naming `what`, as is a bad
/// pointer.
fn required<R>(present: bool, r: capnp::Result<R>, what: &str) -> Result<R> {
    need(present, what)?;
    r.map_err(in_field(what))
}

/// Adds the field a read error is about to the error (its kind is kept).
fn in_field(what: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |mut e| {
        e.extra = if e.extra.is_empty() {
            format!("in field `{what}`")
        } else {
            format!("{} (in field `{what}`)", e.extra)
        };
        e
    }
}

/// A text field as a `String`; non-UTF-8 text is an error naming `what`.
fn text(r: capnp::Result<capnp::text::Reader<'_>>, what: &str) -> Result<String> {
    let r = r.map_err(in_field(what))?;
    let s = r.to_str().map_err(|e| in_field(what)(e.into()))?;
    Ok(s.to_owned())
}

/// An enum field; a value this schema does not know is an error naming
/// `what`.
fn enum_field<T>(r: std::result::Result<T, capnp::NotInSchema>, what: &str) -> Result<T> {
    r.map_err(|e| in_field(what)(e.into()))
}

/// An optional-value struct field (`OptU32` ...): absent means "not given"
/// (an old writer may not know a newer field), so a null pointer reads as
/// `None`.
fn optional<R, T>(
    present: bool,
    get: impl FnOnce() -> capnp::Result<R>,
    read: impl FnOnce(R) -> Result<Option<T>>,
) -> Result<Option<T>> {
    if present {
        read(get()?)
    } else {
        Ok(None)
    }
}

fn len_u32(n: usize) -> u32 {
    // Lists longer than u32::MAX cannot be encoded; such a request would be
    // far beyond any message size limit anyway.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `items` with their list index, for filling a list of
/// `len_u32(items.len())` elements (never an index past its end).
fn indexed<T>(items: &[T]) -> impl Iterator<Item = (u32, &T)> {
    (0..len_u32(items.len())).zip(items)
}
