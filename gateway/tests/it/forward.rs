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
    let _forward = forwarder(listen, target);
    let mut client = connect_when_up(listen).await;
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

fn forwarder(listen: u16, target: u16) -> Child {
    Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "forward",
                "--map",
                &format!("127.0.0.1:{listen}=127.0.0.1:{target}"),
            ])
            .env("LOG_LEVEL", "warn")
            .spawn()
            .unwrap(),
    )
}

async fn connect_when_up(port: u16) -> tokio::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("forwarder not listening: {e}"),
        }
    }
}

/// A gateway that closes a connection before answering the TLS hello (its listener closed
/// with the connection still queued, or the VIP moved): the edge sends the hello again on
/// a new connection, and the client never notices. Plain bytes are never sent twice.
#[tokio::test]
async fn an_unanswered_tls_hello_goes_again_and_plain_bytes_never_do() {
    let listen = free_tcp_port("127.0.0.1");
    let server = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let target = server.local_addr().unwrap().port();
    let _forward = forwarder(listen, target);
    let hello: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];

    let mut client = connect_when_up(listen).await;
    client.write_all(hello).await.unwrap();
    let (mut first, _) = server.accept().await.unwrap();
    let mut buf = vec![0u8; hello.len()];
    first.read_exact(&mut buf).await.unwrap();
    drop(first); // closed without a byte back
    let (mut second, _) = tokio::time::timeout(Duration::from_secs(3), server.accept())
        .await
        .expect("the edge tried again")
        .unwrap();
    second.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, hello, "the same hello, again");
    // This one holds the hello without a word (a gateway killed under it): after 250 ms
    // the edge gives up on it and tries a third connection.
    let (mut third, _) = tokio::time::timeout(Duration::from_secs(3), server.accept())
        .await
        .expect("the edge stopped waiting for a silent gateway")
        .unwrap();
    third.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, hello);
    third.write_all(b"server hello").await.unwrap();
    let mut answer = [0u8; 12];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"server hello");
    drop((client, second, third));

    let mut client = connect_when_up(listen).await;
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (mut first, _) = server.accept().await.unwrap();
    let mut buf = [0u8; 18];
    first.read_exact(&mut buf).await.unwrap();
    drop(first);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the client sees the close: {read:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server.accept())
            .await
            .is_err(),
        "a plain request is not sent twice"
    );
}
