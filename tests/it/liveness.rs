//! Connections that go silent: a network that drops a live connection
//! without a FIN or RST (a host that lost power, a NAT that forgot the flow)
//! must not stall the sender; a receiver that is slow but pings must not be
//! taken for dead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shipper::proto::{Connection, Frame};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::util::*;

/// A TCP proxy on 127.0.0.1 whose live connections can be blackholed: they
/// stop forwarding in both directions with both sockets left open (no FIN,
/// no RST), as when a middlebox forgets a flow. Connections made after that
/// are forwarded normally.
struct BlackholeProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    /// Cancelled to freeze every connection accepted before.
    freeze: Arc<Mutex<CancellationToken>>,
}

impl BlackholeProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let freeze = Arc::new(Mutex::new(CancellationToken::new()));
        let (count, tokens) = (accepted.clone(), freeze.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let frozen = tokens.lock().unwrap().clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let forward = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut cr, &mut sw) => {}
                            _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        }
                    };
                    tokio::select! {
                        _ = forward => {}
                        // Hold both sockets open and forward nothing, forever.
                        _ = frozen.cancelled() => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            freeze,
        }
    }

    /// Freeze every connection now open; later ones work.
    fn blackhole(&self) {
        let mut token = self.freeze.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// How it broke: after a middlebox silently dropped the live connection, the
/// sender waited 600 s for an acknowledgement that could never come, and a
/// page written after the drop did not arrive, though a new connection
/// would have worked at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_blackholed_mid_session_is_dropped_and_the_page_still_arrives() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let proxy = BlackholeProxy::start(r.addr).await;
    let extra = "peer_timeout = \"2s\"\n";
    let s = env.start_sender(proxy.addr, extra);
    let config = env.config_file(
        "sender.toml",
        &env.sender_toml(&proxy.addr.to_string(), extra),
    );
    env.write("first.html", "shipped before the drop");
    wait_in_sync(&env).await;
    assert_eq!(proxy.accepted(), 1);

    proxy.blackhole();
    env.write("page.html", "written after the drop");
    wait_in_sync(&env).await;
    assert!(proxy.accepted() >= 2, "the sender never reconnected");
    let v = wait_status(&config, "sender answering", |_| true).await;
    let error = v["receivers"][0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("silent"), "status does not say why: {v}");

    s.stop().await;
    r.stop().await;
}

/// A receiver that takes several peer timeouts to apply a bundle, pinging
/// meanwhile (as the real one does), is waited for, not dropped: the bundle
/// is acknowledged on its first connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_apply_that_pings_is_not_taken_for_a_dead_receiver() {
    let env = Env::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let apply_time = std::time::Duration::from_secs(4);
    let part = env.path().join("received.zip");
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut c = Connection::new(stream);
        assert!(matches!(c.expect_frame().await, Ok(Frame::Hello { .. })));
        c.write_frame(&Frame::Welcome {
            last_applied: 0,
            instance: [7; 16],
            accepts: shipper::proto::frame::Accepts {
                max_entries: 100_000,
                max_bundle_size: 1 << 30,
                max_file_size: 1 << 30,
                max_unpacked: 1 << 30,
            },
            rolled_back: None,
        })
        .await
        .unwrap();
        // Answer idle pings until the bundle comes, then "apply" slowly.
        loop {
            match c.expect_frame().await {
                Ok(Frame::Ping) => c.write_frame(&Frame::Ping).await.unwrap(),
                Ok(Frame::Bundle { seq, size }) => {
                    c.recv_body(size, (&part, ())).await.unwrap();
                    assert!(matches!(c.expect_frame().await, Ok(Frame::Trailer { .. })));
                    let (_, alive) = c
                        .ping_while(shipper::proto::APPLY_PING, tokio::time::sleep(apply_time))
                        .await;
                    alive.unwrap();
                    c.write_frame(&Frame::Ack {
                        seq,
                        hook: Default::default(),
                    })
                    .await
                    .unwrap();
                }
                // The sender hung up (the test is over) or gave up on us.
                _ => return listener,
            }
        }
    });
    let extra = "peer_timeout = \"2s\"\n";
    let config = env.config_file("sender.toml", &env.sender_toml(&addr.to_string(), extra));
    env.write("a.html", "A");
    let s = env.start_sender(addr, extra);

    let v = wait_status(&config, "acknowledged", |v| {
        v["receivers"][0]["last_ack_seq"].as_u64().is_some()
    })
    .await;
    assert_eq!(
        v["receivers"][0]["last_error"],
        serde_json::Value::Null,
        "{v}"
    );
    assert_eq!(v["receivers"][0]["connected"], true, "{v}");
    s.stop().await;
    let _ = fake.await;
}
