//! SPEC §2 push and mute rows over HTTP, and the endpoint allowlist (§6):
//! every refused subscription gets its code and nothing is contacted.
//! Delivery itself is tested against a real push service in `tests/node/push/`.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::Duration;

use backchannel_tests::TestServer;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

fn browser_keys() -> (String, String) {
    let secret = p256::SecretKey::from_slice(&[9_u8; 32]).unwrap();
    let point = secret.public_key().to_sec1_bytes();
    (
        URL_SAFE_NO_PAD.encode(point),
        URL_SAFE_NO_PAD.encode([5_u8; 16]),
    )
}

fn subscription(endpoint: &str) -> Value {
    let (p256dh, auth) = browser_keys();
    json!({ "endpoint": endpoint, "expirationTime": null, "keys": { "p256dh": p256dh, "auth": auth } })
}

const FCM: &str = "https://fcm.googleapis.com/fcm/send/dGVzdA:APA91b";

#[test]
fn a_browser_subscription_to_a_known_push_service_is_created() {
    let server = TestServer::start();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    let answer = api.post(
        "/api/push/subscriptions",
        subscription(FCM),
        Some(&ada.access_token),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let again = api.post(
        "/api/push/subscriptions",
        subscription(FCM),
        Some(&ada.access_token),
    );
    assert_eq!(
        again.status, 201,
        "subscribing twice is harmless: {again:?}"
    );
    let (p256dh, auth) = browser_keys();
    let padded = api.post(
        "/api/push/subscriptions",
        json!({ "endpoint": FCM, "keys": { "p256dh": format!("{p256dh}="), "auth": format!("{auth}==") } }),
        Some(&ada.access_token),
    );
    assert_eq!(
        padded.status, 201,
        "padded base64url is accepted too: {padded:?}"
    );
}

#[test]
fn subscribing_needs_a_signed_in_user() {
    let server = TestServer::start();
    server
        .api()
        .post("/api/push/subscriptions", subscription(FCM), None)
        .assert_error(401, "missing_token");
}

#[test]
fn endpoints_the_operator_did_not_allow_are_refused_and_never_contacted() {
    let watched = TcpListener::bind("127.0.0.1:0").unwrap();
    watched.set_nonblocking(true).unwrap();
    let port = watched.local_addr().unwrap().port();
    let server = TestServer::start();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    for endpoint in [
        "https://push.evil.example/wpush/1".to_string(),
        "https://fcm.googleapis.com.evil.example/fcm/send/1".to_string(),
        "file:///etc/passwd".to_string(),
        "ftp://fcm.googleapis.com/x".to_string(),
        format!("http://localhost:{port}/push/1"),
        format!("http://127.0.0.1:{port}/push/1"),
        format!("https://127.0.0.1:{port}/push/1"),
        "https://10.0.0.8/push".to_string(),
        "https://192.168.1.1/push".to_string(),
        "https://169.254.169.254/latest/meta-data/".to_string(),
        "https://[::1]/push".to_string(),
        "http://fcm.googleapis.com/fcm/send/1".to_string(),
        "https://user:secret@fcm.googleapis.com/fcm/send/1".to_string(),
    ] {
        api.post(
            "/api/push/subscriptions",
            subscription(&endpoint),
            Some(&ada.access_token),
        )
        .assert_error(400, "endpoint_not_allowed");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        watched.accept().is_err(),
        "the server contacted an endpoint it refused"
    );
}

#[test]
fn the_operator_can_allow_more_hosts_and_plain_http_for_local_services() {
    let server = TestServer::start_with(|settings| {
        settings.push.allowed_hosts = vec!["push.example.org".into()];
        settings.push.insecure_hosts = vec!["127.0.0.1".into()];
    });
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    for endpoint in [
        "https://push.example.org/w/1",
        "http://127.0.0.1:4000/push/1",
    ] {
        let answer = api.post(
            "/api/push/subscriptions",
            subscription(endpoint),
            Some(&ada.access_token),
        );
        assert_eq!(answer.status, 201, "{endpoint}: {answer:?}");
    }
}

#[test]
fn malformed_subscriptions_are_invalid_subscription() {
    let server = TestServer::start();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    let (p256dh, auth) = browser_keys();
    let not_on_the_curve = URL_SAFE_NO_PAD.encode([4_u8; 65]);
    let short_auth = URL_SAFE_NO_PAD.encode([5_u8; 15]);
    for body in [
        json!({ "endpoint": FCM }),
        json!({ "keys": { "p256dh": p256dh, "auth": auth } }),
        json!({ "endpoint": 42, "keys": { "p256dh": p256dh, "auth": auth } }),
        json!({ "endpoint": "/relative", "keys": { "p256dh": p256dh, "auth": auth } }),
        json!({ "endpoint": FCM, "keys": { "p256dh": "not base64!", "auth": auth } }),
        json!({ "endpoint": FCM, "keys": { "p256dh": not_on_the_curve, "auth": auth } }),
        json!({ "endpoint": FCM, "keys": { "p256dh": p256dh[..20], "auth": auth } }),
        json!({ "endpoint": FCM, "keys": { "p256dh": p256dh, "auth": short_auth } }),
        json!({ "endpoint": FCM, "keys": { "p256dh": p256dh } }),
    ] {
        api.post("/api/push/subscriptions", body, Some(&ada.access_token))
            .assert_error(400, "invalid_subscription");
    }
}

#[test]
fn a_huge_subscription_body_is_payload_too_large() {
    let server = TestServer::start();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    let huge = format!("{FCM}{}", "a".repeat(1024 * 1024));
    api.post(
        "/api/push/subscriptions",
        subscription(&huge),
        Some(&ada.access_token),
    )
    .assert_error(413, "payload_too_large");
}

#[test]
fn unsubscribing_answers_no_content_even_when_nothing_was_subscribed() {
    let server = TestServer::start();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    api.post(
        "/api/push/subscriptions",
        subscription(FCM),
        Some(&ada.access_token),
    );
    for _ in 0..2 {
        let answer = api.delete(
            "/api/push/subscriptions",
            json!({ "endpoint": FCM }),
            Some(&ada.access_token),
        );
        assert_eq!(answer.status, 204, "{answer:?}");
    }
}

#[test]
fn muting_needs_a_known_post_or_conversation() {
    let server = TestServer::start();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    api.put(
        "/api/mutes/4NMNnkMhL8jXrdJ9jamS58PAVdXu",
        json!({}),
        Some(&ada.access_token),
    )
    .assert_error(404, "not_found");
    api.put("/api/mutes/not-an-id", json!({}), Some(&ada.access_token))
        .assert_error(400, "invalid_document_id");
    api.put("/api/mutes/4NMNnkMhL8jXrdJ9jamS58PAVdXu", json!({}), None)
        .assert_error(401, "missing_token");
}
