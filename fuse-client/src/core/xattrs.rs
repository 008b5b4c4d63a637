//! Extended attributes (POSIX ACLs among them): getxattr and listxattr are
//! answered from one cached GetXattrs reply per inode (attribute TTL), and
//! with no round trip at all for an inode whose fresh attributes say it
//! has none, which is what the kernel's probe of `security.capability`
//! before every write finds. Changes go to metad and drop the cached copy.

use std::sync::Arc;
use std::time::Instant;

use torchfs_proto::meta::{errno, Ino, MetaError, MetaReply, MetaRequest, Xattr, XattrMode};
use torchfs_rdma::Transport;

use super::client::Client;
use super::control::is_control_ino;
use super::error::{unexpected, ClientError};
use super::meta::MetaService;
use super::sync::lock;

fn no_data(name: &str) -> ClientError {
    MetaError::fs(errno::ENODATA, format!("no xattr {name:?}")).into()
}

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Every extended attribute of `ino`, in name order.
    async fn xattrs(&self, ino: Ino) -> Result<Arc<Vec<Xattr>>, ClientError> {
        if is_control_ino(ino) {
            return Ok(Arc::new(Vec::new()));
        }
        if let Some(x) = lock(&self.inner.cache).xattrs(ino, Instant::now()) {
            return Ok(x);
        }
        match self.meta_call(MetaRequest::GetXattrs { ino }).await? {
            MetaReply::Xattrs(x) => {
                let x = Arc::new(x);
                lock(&self.inner.cache).put_xattrs(ino, x.clone(), Instant::now());
                Ok(x)
            }
            other => Err(unexpected("GetXattrs", other)),
        }
    }

    /// The value of one extended attribute (ENODATA when absent).
    pub async fn getxattr(&self, ino: Ino, name: &str) -> Result<Vec<u8>, ClientError> {
        let all = self.xattrs(ino).await?;
        all.iter()
            .find(|x| x.name == name)
            .map(|x| x.value.clone())
            .ok_or_else(|| no_data(name))
    }

    /// The names of `ino`'s extended attributes as listxattr(2) returns
    /// them: each followed by a NUL byte.
    pub async fn listxattr(&self, ino: Ino) -> Result<Vec<u8>, ClientError> {
        let all = self.xattrs(ino).await?;
        let mut names = Vec::with_capacity(all.iter().map(|x| x.name.len() + 1).sum());
        for x in all.iter() {
            names.extend_from_slice(x.name.as_bytes());
            names.push(0);
        }
        Ok(names)
    }

    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &str,
        value: &[u8],
        mode: XattrMode,
    ) -> Result<(), ClientError> {
        if is_control_ino(ino) {
            return Err(ClientError::Control {
                reason: "control files have no extended attributes",
            });
        }
        let req = MetaRequest::SetXattr {
            ino,
            name: name.to_string(),
            value: value.to_vec(),
            mode,
        };
        self.xattr_changed(ino, "SetXattr", req).await
    }

    pub async fn removexattr(&self, ino: Ino, name: &str) -> Result<(), ClientError> {
        if is_control_ino(ino) {
            return Err(no_data(name));
        }
        let req = MetaRequest::RemoveXattr {
            ino,
            name: name.to_string(),
        };
        self.xattr_changed(ino, "RemoveXattr", req).await
    }

    /// Sends a change of `ino`'s extended attributes; its attributes (the
    /// mode, after an ACL change) and cached xattrs are then out of date.
    async fn xattr_changed(
        &self,
        ino: Ino,
        request: &'static str,
        req: MetaRequest,
    ) -> Result<(), ClientError> {
        let reply = self.meta_call(req).await;
        lock(&self.inner.cache).invalidate_attr(ino);
        match reply? {
            MetaReply::Attr(attr) => {
                self.cache_attr(attr);
                Ok(())
            }
            other => Err(unexpected(request, other)),
        }
    }
}
