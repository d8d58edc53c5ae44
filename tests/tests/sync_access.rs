//! Access on `/sync` ends when it ends: a socket upgraded earlier but not yet
//! joined keeps no rights its session or role has lost, and one user or
//! address cannot hold sockets without limit.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use backchannel_sync::{Join, Message, PeerId, PeerMetadata};
use backchannel_tests::{Role, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message as Frame;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(server: &TestServer, token: &str) -> String {
    format!(
        "{}/sync?token={token}",
        server.base_url.replace("http://", "ws://")
    )
}

fn upgrade(runtime: &Runtime, server: &TestServer, token: &str) -> Ws {
    let (ws, _) = runtime
        .block_on(tokio_tungstenite::connect_async(ws_url(server, token)))
        .unwrap();
    ws
}

/// What the server answers a `join`: its `peer` message, or why it refused.
#[derive(Debug, PartialEq)]
enum JoinAnswer {
    Peer,
    Refused(String),
    Closed,
}

fn join(runtime: &Runtime, ws: &mut Ws) -> JoinAnswer {
    runtime.block_on(async {
        let join = Message::Join(Join {
            sender_id: PeerId::new(format!("access-test-{}", uuid_like())),
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: Some(true),
            }),
            supported_protocol_versions: Some(vec!["1".into()]),
        });
        // The server may already have closed the socket: then the send fails
        // and the answer is what was sent before the close.
        let _ = ws.send(Frame::Binary(join.encode().into())).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(frame) = ws.next().await {
                match frame {
                    Ok(Frame::Binary(bytes)) => match Message::decode(&bytes) {
                        Ok(Message::Peer(_)) => return JoinAnswer::Peer,
                        Ok(Message::Error(error)) => return JoinAnswer::Refused(error.message),
                        _ => continue,
                    },
                    Ok(Frame::Close(_)) | Err(_) => return JoinAnswer::Closed,
                    Ok(_) => continue,
                }
            }
            JoinAnswer::Closed
        });
        answer.await.expect("the server answers a join")
    })
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn a_socket_upgraded_before_logout_cannot_join_after_it() {
    let server = TestServer::start();
    let api = server.api();
    let member = api.signed_up("leaving@example.org");
    let runtime = Runtime::new().unwrap();
    let mut ws = upgrade(&runtime, &server, &member.access_token);

    let logout = api.post("/api/auth/logout", json!({}), Some(&member.access_token));
    assert_eq!(logout.status, 204, "{:?}", logout.body);

    let answer = join(&runtime, &mut ws);
    assert_ne!(
        answer,
        JoinAnswer::Peer,
        "a socket of an ended session joined"
    );
}

#[test]
fn a_manager_demoted_before_joining_is_closed_and_cannot_join_as_a_manager() {
    let server = TestServer::start_with_accounts(&[
        ("boss@example.org", "Boss", Role::Manager),
        ("second@example.org", "Second", Role::Manager),
    ]);
    let api = server.api();
    let boss = api.signed_in("boss@example.org");
    let second = api.signed_in("second@example.org");
    let runtime = Runtime::new().unwrap();
    let mut ws = upgrade(&runtime, &server, &second.access_token);

    let demoted = api.put(
        &format!("/api/users/{}/role", second.user_id),
        json!({"role": "member"}),
        Some(&boss.access_token),
    );
    assert_eq!(demoted.status, 200, "{:?}", demoted.body);

    let answer = join(&runtime, &mut ws);
    assert_ne!(
        answer,
        JoinAnswer::Peer,
        "a socket upgraded as a manager joined after the demotion"
    );
}

#[test]
fn a_session_that_lives_still_joins() {
    let server = TestServer::start();
    let api = server.api();
    let member = api.signed_up("staying@example.org");
    let runtime = Runtime::new().unwrap();
    let mut ws = upgrade(&runtime, &server, &member.access_token);
    assert_eq!(join(&runtime, &mut ws), JoinAnswer::Peer);
}

#[test]
fn sockets_beyond_the_per_user_cap_are_refused_before_the_upgrade_and_freed_when_closed() {
    let server = TestServer::start_with(|settings| settings.limits.sync_connections_per_user = 2);
    let api = server.api();
    let member = api.signed_up("many-tabs@example.org");
    let runtime = Runtime::new().unwrap();
    let first = upgrade(&runtime, &server, &member.access_token);
    let _second = upgrade(&runtime, &server, &member.access_token);

    let third = runtime.block_on(tokio_tungstenite::connect_async(ws_url(
        &server,
        &member.access_token,
    )));
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("too_many_connections"), "{body}");
        }
        other => panic!("a third socket was not refused: {:?}", other.map(|_| ())),
    }
    // Another user is not affected.
    let other = api.signed_up("other@example.org");
    let _theirs = upgrade(&runtime, &server, &other.access_token);

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = runtime.block_on(tokio_tungstenite::connect_async(ws_url(
            &server,
            &member.access_token,
        )));
        if again.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed socket never freed its place"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
