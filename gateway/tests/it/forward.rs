//! The edge forwarder (`gateway forward`): a client that connects while nothing listens on
//! the target (the VIP between holders) is relayed once a gateway answers, not dropped.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::free_tcp_port;

/// Kills the forwarder on every path.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_connection_made_while_the_target_is_down_reaches_it_when_it_comes_back() {
    let listen = free_tcp_port("127.0.0.1");
    let target = free_tcp_port("127.0.0.1");
    let _forward = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "forward",
                "--map",
                &format!("127.0.0.1:{listen}=127.0.0.1:{target}"),
            ])
            .env("LOG_LEVEL", "warn")
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", listen)).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("forwarder not listening: {e}"),
        }
    };
    client.write_all(b"ping").await.unwrap();

    // Nothing listens on the target for 400 ms: every try is refused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let server = tokio::net::TcpListener::bind(("127.0.0.1", target))
        .await
        .unwrap();
    let up = Instant::now();
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(3), server.accept())
        .await
        .expect("the forwarder kept trying")
        .unwrap();
    let waited = up.elapsed();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping", "the bytes sent while waiting are relayed");
    conn.write_all(b"pong").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    eprintln!("relayed {waited:?} after the target came back");
    assert!(
        waited < Duration::from_millis(200),
        "the next try follows a refusal within tens of milliseconds: {waited:?}"
    );
}
