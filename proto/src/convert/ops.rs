//! The converters of `MetaRequest` and `MetaReply`, generated from the
//! schema's `Request` and `Response` unions (proto/build/ops): one arm per
//! operation, calling the struct and enum converters of `types`.

use crate::meta::{MetaError, MetaReply, MetaRequest};
use crate::metadata_capnp as mc;

use super::error::read_error;
use super::types::*;
use super::{in_field, indexed, len_u32, required, text, Result};

include!(concat!(env!("OUT_DIR"), "/meta_ops_convert.rs"));
