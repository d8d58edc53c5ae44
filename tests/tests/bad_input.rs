//! Bad input gets a clear 4xx error with a code, never a 500, and the server
//! keeps serving everyone else afterwards.

#![allow(clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use backchannel_tests::{Answer, Api, SignedIn, TestServer};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

fn post_raw(
    api: &Api,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::blocking::Body>,
) -> Answer {
    api.send(
        api.raw()
            .post(api.url(path))
            .header("content-type", content_type)
            .body(body),
    )
}

fn still_serving(api: &Api) {
    assert_eq!(api.get("/healthz", None).status, 200);
    assert_eq!(api.register(&unique_email(), "Still Here").status, 201);
}

fn unique_email() -> String {
    format!(
        "user{}@example.org",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims shaped like the server's own, for forging tokens.
fn claims_for(signed_in: &SignedIn, exp: u64) -> Value {
    let payload = signed_in.access_token.split('.').nth(1).unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"] = json!(exp);
    claims
}

fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn server_secret(server: &TestServer) -> Vec<u8> {
    let text = std::fs::read_to_string(server.data_dir.join("jwt_secret")).unwrap();
    URL_SAFE_NO_PAD.decode(text.trim()).unwrap()
}

#[test]
fn malformed_json_is_malformed_json() {
    let server = TestServer::start();
    let api = server.api();
    post_raw(
        &api,
        "/api/auth/register",
        "application/json",
        "{\"email\": ",
    )
    .assert_error(400, "malformed_json");
    still_serving(&api);
}

#[test]
fn missing_fields_and_wrong_types_are_invalid_request() {
    let server = TestServer::start();
    let api = server.api();
    api.post(
        "/api/auth/register",
        json!({"email": "ada@example.org"}),
        None,
    )
    .assert_error(400, "invalid_request");
    api.post(
        "/api/auth/login",
        json!({"email": 42, "password": ["not", "a", "string"]}),
        None,
    )
    .assert_error(400, "invalid_request");
    api.post("/api/auth/refresh", json!([]), None)
        .assert_error(400, "invalid_request");
    still_serving(&api);
}

#[test]
fn a_body_that_is_not_declared_json_is_unsupported_media_type() {
    let server = TestServer::start();
    let api = server.api();
    post_raw(&api, "/api/auth/login", "text/plain", "{}")
        .assert_error(415, "unsupported_media_type");
}

#[test]
fn a_ten_megabyte_body_is_payload_too_large() {
    let server = TestServer::start();
    let api = server.api();
    let huge = format!(
        "{{\"email\":\"ada@example.org\",\"password\":\"{}\",\"display_name\":\"Ada\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    post_raw(&api, "/api/auth/register", "application/json", huge)
        .assert_error(413, "payload_too_large");
    still_serving(&api);
}

#[test]
fn a_token_signed_with_another_key_is_invalid_token() {
    let server = TestServer::start();
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    let forged = sign_hs256(
        &claims_for(&signed_in, now_secs() + 600),
        b"some other server's secret key!!",
    );
    api.get("/api/me", Some(&forged))
        .assert_error(401, "invalid_token");
    still_serving(&api);
}

#[test]
fn a_token_with_alg_none_is_invalid_token() {
    let server = TestServer::start();
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = claims_for(&signed_in, now_secs() + 600);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        api.get("/api/me", Some(&token))
            .assert_error(401, "invalid_token");
    }
}

#[test]
fn an_expired_token_is_token_expired() {
    let server = TestServer::start();
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    let expired = sign_hs256(
        &claims_for(&signed_in, now_secs() - 3600),
        &server_secret(&server),
    );
    api.get("/api/me", Some(&expired))
        .assert_error(401, "token_expired");
    // The same claims, unexpired and signed with the same key, are accepted:
    // the refusal above is about expiry alone.
    let fresh = sign_hs256(
        &claims_for(&signed_in, now_secs() + 600),
        &server_secret(&server),
    );
    assert_eq!(api.get("/api/me", Some(&fresh)).status, 200);
}

#[test]
fn a_token_with_a_tampered_payload_is_invalid_token() {
    let server = TestServer::start();
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    let mut claims = claims_for(&signed_in, now_secs() + 600);
    claims["role"] = json!("manager");
    let parts: Vec<&str> = signed_in.access_token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    api.get("/api/me", Some(&tampered))
        .assert_error(401, "invalid_token");
    still_serving(&api);
}

#[test]
fn garbage_tokens_and_schemes_are_invalid_token() {
    let server = TestServer::start();
    let api = server.api();
    for header in [
        "Bearer",
        "Bearer not.a.token",
        "Basic YWRhOnB3",
        "Bearer ....",
        "Bearer 🦀",
    ] {
        let answer = api.send(
            api.raw()
                .get(api.url("/api/me"))
                .header("authorization", header),
        );
        answer.assert_error(401, "invalid_token");
    }
}

#[test]
fn an_unknown_api_path_is_a_json_not_found() {
    let server = TestServer::start();
    let api = server.api();
    api.get("/api/nothing-here", None)
        .assert_error(404, "not_found");
    api.get("/missing.js", None).assert_error(404, "not_found");
}
