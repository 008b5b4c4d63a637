//! Lookups and attributes, through the metadata views in order: the
//! control directory, frozen tables, the attribute and dentry cache (with
//! statahead filling it a directory at a time), and metad.

use std::time::Instant;

use torchfs_proto::meta::{
    Attr, DirEntry, Ino, MetaError, MetaReply, MetaRequest, NamedAttr, StatFs, LOOKUP_NAMES_MAX,
};
use torchfs_rdma::Transport;

use super::client::Client;
use super::control::{guard_name, is_control_ino};
use super::error::{unexpected, ClientError};
use super::meta::MetaService;
use super::statahead::statahead;
use super::sync::lock;

impl<M: MetaService, T: Transport> Client<M, T> {
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, ClientError> {
        if let Some(result) = self.inner.control.lookup(parent, name) {
            return result;
        }
        if let Some(found) = self
            .inner
            .frozen
            .table(&self.inner.meta, parent)
            .await
            .and_then(|t| t.lookup(parent, name))
        {
            return Ok(found?);
        }
        if let Some(root) = self
            .inner
            .frozen
            .root_lookup(&self.inner.meta, parent, name)
            .await
        {
            return Ok(root);
        }
        if let Some(found) = self.lookup_cached(parent, name) {
            lock(&self.inner.statahead).hit(parent);
            return found;
        }
        let scan = lock(&self.inner.statahead).miss(parent, Instant::now());
        if let Some(scan) = scan {
            // A failed scan costs only the lookup it was meant to save.
            let inner = &self.inner;
            let fetched = statahead(
                &inner.meta,
                &inner.cache,
                &inner.statahead,
                parent,
                name,
                scan,
            );
            if fetched.await.is_ok() {
                if let Some(found) = self.lookup_cached(parent, name) {
                    return found;
                }
            }
        }
        self.lookup_fresh(parent, name).await
    }

    /// [`Self::lookup`] when the cache alone answers it (no frozen tree,
    /// no control name): a front-end replies at once, on the thread that
    /// read the request, instead of handing it to a task (a thread wake-up
    /// costs more than the lookup). `None`: call [`Self::lookup`].
    pub fn lookup_now(&self, parent: Ino, name: &str) -> Option<Result<Attr, ClientError>> {
        if guard_name(parent, name).is_err() {
            // `.torchfs` and the names in it: the control files answer.
            return None;
        }
        if let Some(found) = self
            .inner
            .frozen
            .table_now(parent)
            .and_then(|t| t.lookup(parent, name))
        {
            return Some(found.map_err(ClientError::from));
        }
        let found = self.lookup_cached(parent, name)?;
        if matches!(&found, Ok(attr) if attr.frozen) {
            // A frozen tree's table answers its names (and may be loading).
            return None;
        }
        lock(&self.inner.statahead).hit(parent);
        Some(found)
    }

    /// [`Self::getattr`] when the cache alone answers it (see
    /// [`Self::lookup_now`]).
    pub fn getattr_now(&self, ino: Ino) -> Option<Attr> {
        if is_control_ino(ino) {
            return None;
        }
        if let Some(attr) = self.inner.frozen.table_now(ino).and_then(|t| t.attr(ino)) {
            return Some(attr);
        }
        let attr = lock(&self.inner.cache).attr(ino, Instant::now())?;
        (!attr.frozen).then(|| self.overlay(attr))
    }

    /// A lookup the cache answers: a fresh entry, or a name missing from a
    /// directory held complete (ENOENT, as a negative dentry would say).
    fn lookup_cached(&self, parent: Ino, name: &str) -> Option<Result<Attr, ClientError>> {
        let now = Instant::now();
        let cache = lock(&self.inner.cache);
        if let Some(attr) = cache.lookup(parent, name, now) {
            drop(cache);
            return Some(Ok(self.overlay(attr)));
        }
        if cache.known_absent(parent, name, now) {
            return Some(Err(MetaError::fs(
                torchfs_proto::meta::errno::ENOENT,
                format!("no entry {name:?} in directory {parent} (listed within the entry TTL)"),
            )
            .into()));
        }
        None
    }

    /// A lookup from metad (never the cache), cached for the entry TTL.
    pub(super) async fn lookup_fresh(&self, parent: Ino, name: &str) -> Result<Attr, ClientError> {
        let attr = self
            .attr_reply(
                "Lookup",
                MetaRequest::Lookup {
                    parent,
                    name: name.to_string(),
                },
            )
            .await?;
        Ok(self.note_lookup(parent, name, attr).await)
    }

    /// Caches what metad answered for `name` in `parent`: the entry for the
    /// entry TTL, the attributes, a frozen tree it shows.
    async fn note_lookup(&self, parent: Ino, name: &str, attr: Attr) -> Attr {
        lock(&self.inner.cache).put_entry(parent, name, attr.ino, Instant::now());
        self.inner
            .frozen
            .note(&self.inner.meta, &attr, Some((parent, name)))
            .await;
        self.cache_attr(attr)
    }

    /// Looks up many names of directory `parent` from metad, a
    /// `LookupMany` per [`LOOKUP_NAMES_MAX`] names, and caches each entry
    /// found as [`Self::lookup_fresh`] does; answers the names found. A
    /// metad that does not know `LookupMany` (an older build answers
    /// Invalid) is asked name by name.
    pub(super) async fn lookup_many_fresh(
        &self,
        parent: Ino,
        names: &[&str],
    ) -> Result<Vec<NamedAttr>, ClientError> {
        let mut found = Vec::with_capacity(names.len());
        for chunk in names.chunks(LOOKUP_NAMES_MAX) {
            let req = MetaRequest::LookupMany {
                parent,
                names: chunk.iter().map(|n| (*n).to_string()).collect(),
            };
            match self.meta_call(req).await {
                Ok(MetaReply::LookedUp(attrs)) => {
                    for NamedAttr { name, attr } in attrs {
                        let attr = self.note_lookup(parent, &name, attr).await;
                        found.push(NamedAttr { name, attr });
                    }
                }
                Ok(other) => return Err(unexpected("LookupMany", other)),
                Err(ClientError::Meta(MetaError::Invalid(_))) => {
                    for name in chunk {
                        if let Ok(attr) = self.lookup_fresh(parent, name).await {
                            found.push(NamedAttr {
                                name: (*name).to_string(),
                                attr,
                            });
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Attributes; the size includes this client's unflushed writes.
    pub async fn getattr(&self, ino: Ino) -> Result<Attr, ClientError> {
        if is_control_ino(ino) {
            return self.inner.control.getattr(ino);
        }
        if let Some(attr) = self
            .inner
            .frozen
            .table(&self.inner.meta, ino)
            .await
            .and_then(|t| t.attr(ino))
        {
            return Ok(attr);
        }
        if let Some(attr) = lock(&self.inner.cache).attr(ino, Instant::now()) {
            return Ok(self.overlay(attr));
        }
        let attr = self
            .attr_reply("GetAttr", MetaRequest::GetAttr { ino })
            .await?;
        self.inner.frozen.note(&self.inner.meta, &attr, None).await;
        Ok(self.cache_attr(attr))
    }

    pub async fn readdir(
        &self,
        ino: Ino,
        after: &str,
        limit: u32,
    ) -> Result<Vec<DirEntry>, ClientError> {
        if is_control_ino(ino) {
            return self.inner.control.readdir(ino, after);
        }
        if let Some(entries) = self
            .inner
            .frozen
            .table(&self.inner.meta, ino)
            .await
            .and_then(|t| t.readdir(ino, after, limit))
        {
            return Ok(entries);
        }
        match self
            .meta_call(MetaRequest::ReadDir {
                ino,
                after: after.to_string(),
                limit,
            })
            .await?
        {
            MetaReply::Entries(entries) => Ok(entries),
            other => Err(unexpected("ReadDir", other)),
        }
    }

    pub async fn readlink(&self, ino: Ino) -> Result<String, ClientError> {
        if let Some(target) = self
            .inner
            .frozen
            .table(&self.inner.meta, ino)
            .await
            .and_then(|t| t.target(ino))
        {
            return Ok(target);
        }
        match self.meta_call(MetaRequest::ReadLink { ino }).await? {
            MetaReply::Link(target) => Ok(target),
            other => Err(unexpected("ReadLink", other)),
        }
    }

    pub async fn statfs(&self) -> Result<StatFs, ClientError> {
        match self.meta_call(MetaRequest::StatFs).await? {
            MetaReply::StatFs(s) => Ok(s),
            other => Err(unexpected("StatFs", other)),
        }
    }

    /// Caches `attr` and returns it with this client's unflushed size.
    pub(super) fn cache_attr(&self, attr: Attr) -> Attr {
        lock(&self.inner.cache).put_attr(attr.clone(), Instant::now());
        self.overlay(attr)
    }

    fn overlay(&self, mut attr: Attr) -> Attr {
        if let Some(size) = self
            .inner
            .handles
            .file_of(attr.ino)
            .and_then(|f| f.pending_size())
        {
            attr.size = size;
        }
        attr
    }
}
