//! The control plane of a node: registration with metad and heartbeats, on
//! a std thread of its own running a tokio current-thread runtime (the
//! metad client is tokio; the data path stays on glommio).

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{FragmentRef, MetaError, MetaRequest, NodeInfo};

use crate::error::DataplaneError;
use crate::store::dma::NodeUsage;

/// How long a starting node waits for metad before giving up.
pub const METAD_STARTUP_TIMEOUT_MS: u64 = 20_000;

pub(crate) struct Control {
    thread: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Control {
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Bad fragments sent to metad in one report at most.
const BAD_REPORT_MAX: usize = 256;

/// Registers `info` with metad (blocking until it answered or the startup
/// timeout passed), then heartbeats every `heartbeat_ms` in the background
/// and reports the fragments the scrubs send on `bad` as they come.
pub(crate) fn start(
    metad: Vec<String>,
    info: NodeInfo,
    heartbeat_ms: u64,
    usage: Arc<NodeUsage>,
    mut bad: futures::channel::mpsc::Receiver<FragmentKey>,
) -> Result<Control, DataplaneError> {
    let addrs = metad.join(",");
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), DataplaneError>>();
    let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let unreachable = {
        let addrs = addrs.clone();
        move |message: String| DataplaneError::MetadUnreachable {
            addrs: addrs.clone(),
            timeout_ms: METAD_STARTUP_TIMEOUT_MS,
            message,
        }
    };
    let thread = std::thread::Builder::new()
        .name("torchfs-control".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(DataplaneError::Control {
                        message: format!("tokio runtime: {e}"),
                    }));
                    return;
                }
            };
            runtime.block_on(async move {
                let opts = MetaClientOptions {
                    retry_for_ms: METAD_STARTUP_TIMEOUT_MS,
                    ..MetaClientOptions::default()
                };
                let client = match MetaClient::new(metad, opts) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(DataplaneError::Control {
                            message: format!("metad addresses: {e}"),
                        }));
                        return;
                    }
                };
                let id = info.id;
                let register = |info: NodeInfo| {
                    let client = client.clone();
                    let unreachable = unreachable.clone();
                    async move {
                        let limit = Duration::from_millis(METAD_STARTUP_TIMEOUT_MS);
                        match tokio::time::timeout(
                            limit,
                            client.call(MetaRequest::RegisterNode { info }),
                        )
                        .await
                        {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e @ (MetaError::Fs { .. } | MetaError::Invalid(_)))) => {
                                Err(DataplaneError::MetadRefused {
                                    message: e.to_string(),
                                })
                            }
                            Ok(Err(e)) => Err(unreachable(e.to_string())),
                            Err(_) => Err(unreachable("no answer".into())),
                        }
                    }
                };
                let registered = register(info.clone()).await;
                let ok = registered.is_ok();
                let _ = ready_tx.send(registered);
                if !ok {
                    return;
                }
                let mut tick = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut unreported: Vec<FragmentRef> = Vec::new();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        _ = tick.tick() => {}
                        Some(key) = bad.next() => {
                            unreported.push(fragment_ref(key));
                            while let Ok(key) = bad.try_recv() {
                                unreported.push(fragment_ref(key));
                            }
                            report_bad(&client, id, &mut unreported).await;
                            continue;
                        }
                    }
                    if !unreported.is_empty() {
                        report_bad(&client, id, &mut unreported).await;
                    }
                    let used_bytes = usage.used_bytes.load(Ordering::Relaxed);
                    let heartbeat = MetaRequest::Heartbeat {
                        id,
                        used_bytes,
                        capacity_bytes: usage.capacity_bytes,
                    };
                    match client.call(heartbeat).await {
                        Ok(_) => {}
                        // metad does not know us (it lost state, or we were
                        // removed): register again with current figures.
                        Err(MetaError::Fs { .. } | MetaError::Invalid(_)) => {
                            let info = NodeInfo {
                                used_bytes,
                                ..info.clone()
                            };
                            if let Err(e) = register(info).await {
                                tracing::warn!("re-registering with metad: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("heartbeat to metad: {e}"),
                    }
                }
            });
        })
        .map_err(|e| DataplaneError::Control {
            message: format!("spawn control thread: {e}"),
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Control { thread, stop }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            // The thread died without a word: it panicked (its message is
            // on stderr).
            let _ = thread.join();
            Err(DataplaneError::Control {
                message: "control-plane thread panicked during registration".into(),
            })
        }
    }
}

fn fragment_ref(key: FragmentKey) -> FragmentRef {
    FragmentRef {
        ino: key.ino,
        stripe: key.stripe,
        generation: key.generation,
        index: key.index,
    }
}

/// Sends metad what the scrubs found bad (a bounded batch); what fails to
/// go is kept for the next heartbeat, up to a bound.
async fn report_bad(client: &MetaClient, node: u64, unreported: &mut Vec<FragmentRef>) {
    let batch: Vec<FragmentRef> = unreported
        .drain(..unreported.len().min(BAD_REPORT_MAX))
        .collect();
    let req = MetaRequest::ReportBadFragments {
        node,
        fragments: batch.clone(),
    };
    if let Err(e) = client.call(req).await {
        tracing::warn!("report {} bad fragments to metad: {e}", batch.len());
        if unreported.len() < 16 * BAD_REPORT_MAX {
            unreported.extend(batch);
        }
    }
}
