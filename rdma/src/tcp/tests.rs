//! TcpTransport against a small in-test tokio server that speaks the frame
//! protocol over an in-memory map, with switches to misbehave.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::*;
use torchfs_proto::fragment::FragmentErrorCode;

#[derive(Default)]
struct Server {
    fragments: Mutex<HashMap<FragmentKey, Vec<u8>>>,
    accepted: AtomicUsize,
    /// Flip a bit of every get reply after the node's own check passed.
    corrupt_in_transit: AtomicBool,
    /// Read requests but never answer.
    mute: AtomicBool,
    /// Close every connection after one request.
    one_shot: AtomicBool,
}

async fn serve(server: Arc<Server>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            server.accepted.fetch_add(1, Ordering::SeqCst);
            let server = server.clone();
            tokio::spawn(async move {
                let mut conn = stream.compat();
                while let Ok(Some(request)) = frame::read_request(&mut conn).await {
                    if server.mute.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    let (response, bulk) = handle(&server, &mut conn, request).await;
                    if frame::write_response(&mut conn, &response, &bulk)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if server.one_shot.load(Ordering::SeqCst) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn error(code: FragmentErrorCode) -> FragmentResponse {
    FragmentResponse::Error {
        code,
        message: format!("{code:?}"),
        expected: 0,
        actual: 0,
    }
}

async fn handle(
    server: &Server,
    conn: &mut Conn,
    request: FragmentRequest,
) -> (FragmentResponse, Vec<u8>) {
    match request {
        FragmentRequest::Put {
            key,
            length,
            crc32c,
        } => {
            let mut data = vec![0u8; length as usize];
            frame::read_bulk(conn, &mut data).await.unwrap();
            if crc32c::crc32c(&data) != crc32c {
                return (error(FragmentErrorCode::ChecksumMismatch), Vec::new());
            }
            server.fragments.lock().unwrap().insert(key, data);
            (FragmentResponse::Ok { length: 0 }, Vec::new())
        }
        FragmentRequest::Get {
            key,
            offset,
            length,
            expected_crc32c,
        } => {
            let fragments = server.fragments.lock().unwrap();
            let Some(data) = fragments.get(&key) else {
                return (error(FragmentErrorCode::NotFound), Vec::new());
            };
            let actual = crc32c::crc32c(data);
            if actual != expected_crc32c {
                let message = "mismatch".to_string();
                let code = FragmentErrorCode::ChecksumMismatch;
                return (
                    FragmentResponse::Error {
                        code,
                        message,
                        expected: expected_crc32c,
                        actual,
                    },
                    Vec::new(),
                );
            }
            let start = offset as usize;
            if start > data.len() {
                return (error(FragmentErrorCode::BadRequest), Vec::new());
            }
            let end = (start + length as usize).min(data.len());
            let mut bulk = data[start..end].to_vec();
            if server.corrupt_in_transit.load(Ordering::SeqCst) && !bulk.is_empty() {
                bulk[0] ^= 1;
            }
            (
                FragmentResponse::Ok {
                    length: bulk.len() as u32,
                },
                bulk,
            )
        }
        FragmentRequest::Delete { key } => match server.fragments.lock().unwrap().remove(&key) {
            Some(_) => (FragmentResponse::Ok { length: 0 }, Vec::new()),
            None => (error(FragmentErrorCode::NotFound), Vec::new()),
        },
        // The in-memory server lists nothing (listings are tested
        // against a real node: dataplane/tests/transport.rs).
        FragmentRequest::List { .. } => (error(FragmentErrorCode::BadRequest), Vec::new()),
    }
}

fn key(index: u8) -> FragmentKey {
    FragmentKey {
        ino: 42,
        stripe: 1,
        generation: 1,
        index,
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn transport() -> TcpTransport {
    TcpTransport::new(TcpOptions {
        connect_timeout_ms: 500,
        request_timeout_ms: 500,
        idle_connections_max: 2,
    })
}

#[tokio::test]
async fn put_get_ranged_delete() {
    let server = Arc::new(Server::default());
    let addr = serve(server.clone()).await;
    let t = transport();
    let bytes = data(100_000);
    let crc = crc32c::crc32c(&bytes);
    t.put(addr, key(0), &bytes).await.unwrap();

    let mut whole = vec![0u8; bytes.len()];
    t.get(addr, key(0), 0, crc, &mut whole).await.unwrap();
    assert_eq!(whole, bytes);

    let mut prefix = vec![0u8; 4096];
    t.get(addr, key(0), 0, crc, &mut prefix).await.unwrap();
    assert_eq!(prefix, bytes[..4096]);

    let mut middle = vec![0u8; 1000];
    t.get(addr, key(0), 5000, crc, &mut middle).await.unwrap();
    assert_eq!(middle, bytes[5000..6000]);

    let mut tail = vec![0u8; 10];
    t.get(addr, key(0), bytes.len() as u32 - 10, crc, &mut tail)
        .await
        .unwrap();
    assert_eq!(tail, bytes[bytes.len() - 10..]);

    let mut past = vec![0u8; 20];
    let err = t
        .get(addr, key(0), bytes.len() as u32 - 10, crc, &mut past)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::ShortFragment {
                available_bytes: 10,
                ..
            }
        ),
        "{err}"
    );

    t.delete(addr, key(0)).await.unwrap();
    let err = t.get(addr, key(0), 0, crc, &mut whole).await.unwrap_err();
    assert_eq!(err.code(), Some(FragmentErrorCode::NotFound), "{err}");
    let err = t.delete(addr, key(0)).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Remote {
                code: FragmentErrorCode::NotFound,
                ..
            }
        ),
        "{err}"
    );

    // Empty fragments are fragments too.
    t.put(addr, key(1), &[]).await.unwrap();
    t.get(addr, key(1), 0, crc32c::crc32c(&[]), &mut [])
        .await
        .unwrap();
}

#[tokio::test]
async fn connections_are_pooled_and_bounded() {
    let server = Arc::new(Server::default());
    let addr = serve(server.clone()).await;
    let t = Arc::new(transport());
    for i in 0..10 {
        t.put(addr, key(i), &data(10)).await.unwrap();
    }
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "one request at a time reuses one connection"
    );
    let tasks: Vec<_> = (0..6u8)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move { t.put(addr, key(i), &data(1 << 20)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let idle = t.idle.lock().unwrap().get(&addr).map_or(0, Vec::len);
    assert!(idle <= 2, "{idle} idle connections kept");
}

#[tokio::test]
async fn stale_pooled_connection_is_replaced() {
    let server = Arc::new(Server::default());
    server.one_shot.store(true, Ordering::SeqCst);
    let addr = serve(server.clone()).await;
    let t = transport();
    for i in 0..3 {
        t.put(addr, key(i), &data(100)).await.unwrap();
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn corruption_in_transit_caught_on_whole_fragment_get() {
    let server = Arc::new(Server::default());
    let addr = serve(server.clone()).await;
    let t = transport();
    let bytes = data(5000);
    let crc = crc32c::crc32c(&bytes);
    t.put(addr, key(0), &bytes).await.unwrap();
    server.corrupt_in_transit.store(true, Ordering::SeqCst);
    let mut buf = vec![0u8; bytes.len()];
    let err = t.get(addr, key(0), 0, crc, &mut buf).await.unwrap_err();
    match err {
        TransportError::ChecksumMismatch {
            expected,
            actual,
            key: k,
            ..
        } => {
            assert_eq!(expected, crc);
            assert_eq!(actual, crc32c::crc32c(&buf));
            assert_eq!(k, key(0));
        }
        other => panic!("{other}"),
    }
    // A node-side mismatch (wrong expected CRC) carries both numbers.
    server.corrupt_in_transit.store(false, Ordering::SeqCst);
    let err = t
        .get(addr, key(0), 100, crc ^ 1, &mut buf[..10])
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::ChecksumMismatch { expected, actual, .. } if expected == crc ^ 1 && actual == crc)
    );
}

#[tokio::test]
async fn timeouts_and_refused_connections() {
    let server = Arc::new(Server::default());
    server.mute.store(true, Ordering::SeqCst);
    let addr = serve(server.clone()).await;
    let t = transport();
    let err = t.delete(addr, key(0)).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                timeout_ms: 500,
                ..
            }
        ),
        "{err}"
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = t.delete(closed, key(0)).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn oversized_put_refused_locally() {
    let t = transport();
    let big = vec![0u8; FRAGMENT_BYTES_MAX as usize + 1];
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let err = t.put(addr, key(0), &big).await.unwrap_err();
    assert!(matches!(err, TransportError::TooLarge { .. }), "{err}");
}

/// The trait's futures must be Send: the client core spawns them.
#[allow(dead_code)]
fn futures_are_send(t: &TcpTransport, addr: SocketAddr, buf: &mut [u8]) {
    fn send<T: Send>(_: T) {}
    send(t.put(addr, key(0), &[]));
    send(t.get(addr, key(0), 0, 0, buf));
    send(t.delete(addr, key(0)));
}
