//! MetaClient: address checks, giving up, and the write ids it sends,
//! against a scripted fake metad (retries reuse the id, reads carry none,
//! the lowest outstanding seq, a new session when metad forgot the old).

use std::sync::Mutex;

use capnp::capability::Rc as CapRc;

use super::*;
use crate::convert::{read_request, read_write_id, write_response};

#[test]
fn rejects_bad_address_lists() {
    assert!(MetaClient::new(vec![], MetaClientOptions::default()).is_err());
    assert!(MetaClient::new(vec!["nohost".into()], MetaClientOptions::default()).is_err());
    assert!(MetaClient::new(vec![":80".into()], MetaClientOptions::default()).is_err());
    assert!(MetaClient::new(vec!["h:99999".into()], MetaClientOptions::default()).is_err());
}

fn assert_send_sync<T: Send + Sync + Clone>() {}

#[test]
fn client_is_send_sync_clone() {
    assert_send_sync::<MetaClient>();
}

#[test]
fn gives_up_with_unavailable_when_nothing_listens() {
    // Bind then drop to get a port that (very likely) refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = MetaClient::new(
        vec![format!("127.0.0.1:{port}")],
        MetaClientOptions {
            retry_for_ms: 300,
            request_timeout_ms: 100,
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let r = rt.block_on(client.call(MetaRequest::StatFs));
    assert!(matches!(r, Err(MetaError::Unavailable(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// What the fake metad does with one request.
enum Action {
    Answer(Result<MetaReply, MetaError>),
    /// Answers after a delay.
    After(u64, Result<MetaReply, MetaError>),
    /// Never answers (the client's attempt times out).
    Hang,
}

/// Decides the answer to the request numbered `n` (from 0, in arrival order).
type Script = Box<dyn Fn(usize, &MetaRequest, Option<WriteId>) -> Action + Send>;

/// Every request the fake metad received, with its write id.
type Seen = Arc<Mutex<Vec<(MetaRequest, Option<WriteId>)>>>;

struct FakeService {
    metadata: mc::metadata::Client,
}

impl mc::service::Server for FakeService {
    fn metadata(
        self: CapRc<Self>,
        _: mc::service::MetadataParams,
        mut results: mc::service::MetadataResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        results.get().set_metadata(self.metadata.clone());
        futures::future::ready(Ok(()))
    }
}

struct FakeMetadata {
    seen: Seen,
    script: Script,
}

impl mc::metadata::Server for FakeMetadata {
    async fn execute(
        self: CapRc<Self>,
        params: mc::metadata::ExecuteParams,
        mut results: mc::metadata::ExecuteResults,
    ) -> Result<(), capnp::Error> {
        let r = params.get()?.get_request()?;
        let (req, id) = (read_request(r)?, read_write_id(r)?);
        let action = {
            let mut seen = self.seen.lock().unwrap();
            seen.push((req.clone(), id));
            (self.script)(seen.len() - 1, &req, id)
        };
        let answer = match action {
            Action::Answer(a) => a,
            Action::After(ms, a) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                a
            }
            Action::Hang => futures::future::pending().await,
        };
        write_response(&answer, results.get().init_response());
        Ok(())
    }
}

/// Starts a fake metad on a thread of its own (it lives until the test
/// process ends); returns its address and what it sees.
fn fake_metad(script: Script) -> (String, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let seen = Seen::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let service: mc::service::Client = capnp_rpc::new_client(FakeService {
                metadata: capnp_rpc::new_client(FakeMetadata {
                    seen: seen2,
                    script,
                }),
            });
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let rpc = two_party(stream, Side::Server, Some(service.clone().client));
                tokio::task::spawn_local(rpc);
            }
        });
    });
    (addr, seen)
}

fn client_of(addr: String) -> MetaClient {
    MetaClient::new(
        vec![addr],
        MetaClientOptions {
            retry_for_ms: 5_000,
            request_timeout_ms: 300,
        },
    )
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn mkdir(name: &str) -> MetaRequest {
    MetaRequest::Mkdir {
        umask: 0,
        parent: 1,
        name: name.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

fn ids(seen: &Seen) -> Vec<Option<(u64, u64, u64)>> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, id)| id.map(|i| (i.client_id, i.seq, i.lowest_outstanding_seq)))
        .collect()
}

#[test]
fn retries_reuse_the_write_id_and_reads_carry_none() {
    // The first attempt is lost (no answer), the second finds no leader;
    // everything after is answered.
    let (addr, seen) = fake_metad(Box::new(|n, _, _| match n {
        0 => Action::Hang,
        1 => Action::Answer(Err(MetaError::Unavailable("electing".into()))),
        _ => Action::Answer(Ok(MetaReply::Unit)),
    }));
    let client = client_of(addr);
    runtime().block_on(async {
        client.call(mkdir("a")).await.unwrap();
        client.call(mkdir("b")).await.unwrap();
        client.call(MetaRequest::GetAttr { ino: 1 }).await.unwrap();
        client
            .call(MetaRequest::Heartbeat {
                id: 1,
                used_bytes: 0,
                capacity_bytes: 0,
            })
            .await
            .unwrap();
    });
    let ids = ids(&seen);
    let c = ids[0].unwrap().0;
    assert_ne!(c, 0);
    assert_eq!(
        ids,
        [
            Some((c, 1, 1)),
            Some((c, 1, 1)),
            Some((c, 1, 1)),
            Some((c, 2, 2)),
            None,
            None
        ]
    );
}

#[test]
fn lowest_outstanding_seq_trails_the_oldest_unanswered_write() {
    // Write 1 is answered slowly: write 2, sent meanwhile, must say that 1
    // is still outstanding; write 3, sent after both, that neither is.
    let (addr, seen) = fake_metad(Box::new(|_, _, id| match id {
        Some(WriteId { seq: 1, .. }) => Action::After(200, Ok(MetaReply::Unit)),
        _ => Action::Answer(Ok(MetaReply::Unit)),
    }));
    let client = client_of(addr);
    runtime().block_on(async {
        let slow = {
            let c = client.clone();
            tokio::spawn(async move { c.call(mkdir("a")).await })
        };
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.call(mkdir("b")).await.unwrap();
        slow.await.unwrap().unwrap();
        client.call(mkdir("c")).await.unwrap();
    });
    let ids = ids(&seen);
    let c = ids[0].unwrap().0;
    assert_eq!(ids, [Some((c, 1, 1)), Some((c, 2, 1)), Some((c, 3, 3))]);
}

#[test]
fn a_forgotten_session_is_renewed_and_the_write_sent_again() {
    // metad forgets the session before the second write.
    let (addr, seen) = fake_metad(Box::new(|n, _, id| match (n, id) {
        (1, Some(id)) => Action::Answer(Err(MetaError::SessionExpired {
            client_id: id.client_id,
            seq: id.seq,
        })),
        _ => Action::Answer(Ok(MetaReply::Unit)),
    }));
    let client = client_of(addr);
    let rt = runtime();
    rt.block_on(async {
        client.call(mkdir("a")).await.unwrap();
        client.call(mkdir("b")).await.unwrap();
        client.call(mkdir("c")).await.unwrap();
    });
    let ids = ids(&seen);
    let (old, new) = (ids[0].unwrap().0, ids[2].unwrap().0);
    assert_ne!(old, new);
    assert_eq!(
        ids,
        [
            Some((old, 1, 1)),
            Some((old, 2, 2)),
            Some((new, 1, 1)),
            Some((new, 2, 2))
        ]
    );
    // A caller-chosen id is never renewed: the error comes back as it is.
    let (addr, _) = fake_metad(Box::new(|_, _, _| {
        Action::Answer(Err(MetaError::SessionExpired {
            client_id: 5,
            seq: 9,
        }))
    }));
    let client = client_of(addr);
    let id = WriteId {
        client_id: 5,
        seq: 9,
        lowest_outstanding_seq: 9,
    };
    let r = rt.block_on(client.call_with_write_id(mkdir("x"), id));
    assert!(matches!(r, Err(MetaError::SessionExpired { .. })), "{r:?}");
}
