//! SPEC §2, the auth rows: register, login, refresh, logout, me. Each row's
//! success and each of its listed errors, over real HTTP.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use backchannel_tests::{Answer, Api, PASSWORD, SignedIn, TestServer};
use serde_json::json;

#[test]
fn healthz_answers_ok() {
    let server = TestServer::start();
    let answer = server.api().get("/healthz", None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({"status": "ok"}));
}

#[test]
fn register_creates_a_signed_in_member() {
    let server = TestServer::start();
    let answer = server.api().register("ada@example.org", "Ada");
    assert_eq!(answer.status, 201, "{answer:?}");
    let user = &answer.body["user"];
    assert_eq!(user["email"], "ada@example.org");
    assert_eq!(user["display_name"], "Ada");
    assert_eq!(user["role"], "member");
    assert!(user["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(
        user["created_at"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000)
    );
    assert_eq!(answer.body["expires_in"], 900);
    assert!(answer.body["access_token"].as_str().is_some());
    assert!(answer.body["refresh_token"].as_str().is_some());
}

#[test]
fn register_with_a_taken_email_in_any_case_is_email_taken() {
    let server = TestServer::start();
    let api = server.api();
    api.signed_up("ada@example.org");
    api.register("ADA@Example.org", "Other Ada")
        .assert_error(409, "email_taken");
}

#[test]
fn register_with_an_invalid_email_is_invalid_email() {
    let server = TestServer::start();
    for email in ["", "ada", "ada@", "@example.org", "ada at example.org"] {
        server
            .api()
            .register(email, "Ada")
            .assert_error(400, "invalid_email");
    }
}

#[test]
fn register_with_a_password_under_eight_characters_is_weak_password() {
    let server = TestServer::start();
    let answer = server.api().post(
        "/api/auth/register",
        json!({"email": "ada@example.org", "password": "1234567", "display_name": "Ada"}),
        None,
    );
    answer.assert_error(400, "weak_password");
}

#[test]
fn register_with_an_empty_display_name_is_invalid_display_name() {
    let server = TestServer::start();
    server
        .api()
        .register("ada@example.org", "   ")
        .assert_error(400, "invalid_display_name");
}

#[test]
fn register_when_signup_is_closed_is_refused() {
    let server = TestServer::start_with(|settings| settings.open_signup = false);
    server
        .api()
        .register("ada@example.org", "Ada")
        .assert_error(403, "signup_closed");
}

#[test]
fn login_with_the_right_password_signs_in() {
    let server = TestServer::start();
    let api = server.api();
    let registered = api.signed_up("ada@example.org");
    let answer = api.login("ada@example.org", PASSWORD);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["user"]["id"], registered.user_id.as_str());
    assert_eq!(answer.body["expires_in"], 900);
    assert!(answer.body["access_token"].as_str().is_some());
    assert!(answer.body["refresh_token"].as_str().is_some());
}

#[test]
fn login_ignores_the_case_of_the_email() {
    let server = TestServer::start();
    let api = server.api();
    api.signed_up("ada@example.org");
    assert_eq!(api.login(" ADA@example.ORG", PASSWORD).status, 200);
}

#[test]
fn login_with_a_wrong_password_is_invalid_credentials() {
    let server = TestServer::start();
    let api = server.api();
    api.signed_up("ada@example.org");
    api.login("ada@example.org", "not the password")
        .assert_error(401, "invalid_credentials");
}

#[test]
fn login_with_an_unknown_email_looks_like_a_wrong_password() {
    let server = TestServer::start();
    let api = server.api();
    api.signed_up("ada@example.org");
    let unknown = api.login("nobody@example.org", PASSWORD);
    let wrong = api.login("ada@example.org", "not the password");
    unknown.assert_error(401, "invalid_credentials");
    assert_eq!(unknown.body, wrong.body);
}

#[test]
fn repeated_failed_logins_are_too_many_attempts_even_with_the_right_password() {
    let server = TestServer::start_with(|settings| {
        settings.limits.login_backoff_base = Duration::from_secs(60);
    });
    let api = server.api();
    api.signed_up("ada@example.org");
    for _ in 0..5 {
        api.login("ada@example.org", "guess")
            .assert_error(401, "invalid_credentials");
    }
    let limited = api.login("ada@example.org", PASSWORD);
    limited.assert_error(429, "too_many_attempts");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    // Other accounts are not locked out by one account's failures.
    api.signed_up("bob@example.org");
    assert_eq!(api.login("bob@example.org", PASSWORD).status, 200);
}

#[test]
fn failed_logins_from_one_address_across_accounts_are_too_many_attempts() {
    let server = TestServer::start();
    let api = server.api();
    for n in 0..30 {
        api.login(&format!("guess{n}@example.org"), "guess")
            .assert_error(401, "invalid_credentials");
    }
    api.login("another@example.org", "guess")
        .assert_error(429, "too_many_attempts");
}

#[test]
fn refresh_returns_a_new_pair_and_the_new_tokens_work() {
    let server = TestServer::start();
    let api = server.api();
    let first = api.signed_up("ada@example.org");
    let answer = api.post(
        "/api/auth/refresh",
        json!({"refresh_token": first.refresh_token}),
        None,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let second = SignedIn::from(&answer);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(answer.body["user"]["id"], first.user_id.as_str());
    assert_eq!(api.get("/api/me", Some(&second.access_token)).status, 200);
    let third = api.post(
        "/api/auth/refresh",
        json!({"refresh_token": second.refresh_token}),
        None,
    );
    assert_eq!(third.status, 200, "{third:?}");
}

#[test]
fn a_refresh_token_used_twice_revokes_the_whole_session() {
    let server = TestServer::start();
    let api = server.api();
    let first = api.signed_up("ada@example.org");
    let rotated = SignedIn::from(&api.post(
        "/api/auth/refresh",
        json!({"refresh_token": first.refresh_token}),
        None,
    ));
    api.post(
        "/api/auth/refresh",
        json!({"refresh_token": first.refresh_token}),
        None,
    )
    .assert_error(401, "refresh_token_reused");
    // Both halves of the rotated pair are now dead too.
    api.get("/api/me", Some(&rotated.access_token))
        .assert_error(401, "session_revoked");
    api.post(
        "/api/auth/refresh",
        json!({"refresh_token": rotated.refresh_token}),
        None,
    )
    .assert_error(401, "session_revoked");
    // Signing in again starts a fresh session.
    assert_eq!(api.login("ada@example.org", PASSWORD).status, 200);
}

#[test]
fn an_access_token_is_not_accepted_as_a_refresh_token() {
    let server = TestServer::start();
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    api.post(
        "/api/auth/refresh",
        json!({"refresh_token": signed_in.access_token}),
        None,
    )
    .assert_error(401, "invalid_token");
    api.get("/api/me", Some(&signed_in.refresh_token))
        .assert_error(401, "invalid_token");
}

#[test]
fn logout_ends_the_session_at_once() {
    let server = TestServer::start();
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    let answer = api.post("/api/auth/logout", json!({}), Some(&signed_in.access_token));
    assert_eq!(answer.status, 204, "{answer:?}");
    api.get("/api/me", Some(&signed_in.access_token))
        .assert_error(401, "session_revoked");
    api.post(
        "/api/auth/refresh",
        json!({"refresh_token": signed_in.refresh_token}),
        None,
    )
    .assert_error(401, "session_revoked");
}

#[test]
fn logout_of_one_session_leaves_the_others_signed_in() {
    let server = TestServer::start();
    let api = server.api();
    let phone = api.signed_up("ada@example.org");
    let laptop = SignedIn::from(&api.login("ada@example.org", PASSWORD));
    api.post("/api/auth/logout", json!({}), Some(&phone.access_token));
    assert_eq!(api.get("/api/me", Some(&laptop.access_token)).status, 200);
}

#[test]
fn logout_without_a_token_is_missing_token() {
    let server = TestServer::start();
    server
        .api()
        .post("/api/auth/logout", json!({}), None)
        .assert_error(401, "missing_token");
}

#[test]
fn me_returns_the_user_and_their_start_documents() {
    let server = TestServer::start();
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    let answer = api.get("/api/me", Some(&signed_in.access_token));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["user"]["id"], signed_in.user_id.as_str());
    assert_eq!(answer.body["user"]["email"], "ada@example.org");
    assert!(answer.body["docs"].is_object());
}

#[test]
fn me_without_a_token_is_missing_token() {
    let server = TestServer::start();
    server
        .api()
        .get("/api/me", None)
        .assert_error(401, "missing_token");
}

#[test]
fn the_push_public_key_is_an_uncompressed_p256_point() {
    use base64::Engine;
    let server = TestServer::start();
    let answer = server.api().get("/api/push/public-key", None);
    assert_eq!(answer.status, 200);
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(answer.body["public_key"].as_str().unwrap())
        .unwrap();
    assert_eq!((key.len(), key[0]), (65, 0x04));
}

#[test]
fn the_root_serves_the_web_app_page() {
    let server = TestServer::start();
    let response = server
        .api()
        .raw()
        .get(server.api().url("/"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(response.text().unwrap().contains("Backchannel"));
}

/// Sends `count` logins for `email` at once and returns their statuses.
fn concurrent_logins(api: &Api, email: &str, count: usize) -> Vec<u16> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (api, email, start) = (api.clone(), email.to_string(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                api.login(&email, "a wrong guess").status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn fifty_concurrent_bad_logins_get_only_the_allowed_verifications() {
    // A long backoff, so no attempt arriving late can be let through.
    let server = TestServer::start_with(|settings| {
        settings.limits.login_backoff_base = Duration::from_secs(3600);
    });
    let api = server.api();
    api.signed_up("ada@example.org");
    let statuses = concurrent_logins(&api, "ada@example.org", 50);
    let verified = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((verified, refused), (5, 45), "{statuses:?}");
}

#[test]
fn after_the_backoff_the_right_password_signs_in() {
    let server = TestServer::start_with(|settings| {
        settings.limits.login_backoff_base = Duration::from_millis(200);
    });
    let api = server.api();
    api.signed_up("ada@example.org");
    for _ in 0..5 {
        api.login("ada@example.org", "guess")
            .assert_error(401, "invalid_credentials");
    }
    // The backoff counts from the fifth failure, which has been answered.
    std::thread::sleep(Duration::from_millis(300));
    let answer = api.login("ada@example.org", PASSWORD);
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn a_flood_of_sign_ups_from_one_address_is_too_many_signups() {
    let server = TestServer::start_with(|settings| settings.limits.signups_per_address = 3);
    let api = server.api();
    for n in 0..3 {
        api.signed_up(&format!("member{n}@example.org"));
    }
    let refused = api.register("one-more@example.org", "One more");
    refused.assert_error(429, "too_many_signups");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
}

/// A failed login for a fresh unknown account, as if from `forwarded_for`.
fn failed_login_via(api: &Api, n: usize, forwarded_for: &str) -> Answer {
    api.send(
        api.raw()
            .post(api.url("/api/auth/login"))
            .header("X-Forwarded-For", forwarded_for)
            .json(&json!({"email": format!("guess{n}@example.org"), "password": "guess"})),
    )
}

#[test]
fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_address_limit() {
    let server = TestServer::start_with(|settings| {
        settings.trusted_proxies = "127.0.0.1".parse().unwrap();
        settings.limits.login_failures_per_address = 3;
    });
    let api = server.api();
    for n in 0..3 {
        failed_login_via(&api, n, "203.0.113.1").assert_error(401, "invalid_credentials");
    }
    failed_login_via(&api, 3, "203.0.113.1").assert_error(429, "too_many_attempts");
    // A spoofed left-most entry does not help the same client.
    failed_login_via(&api, 4, "198.51.100.9, 203.0.113.1").assert_error(429, "too_many_attempts");
    failed_login_via(&api, 5, "203.0.113.2").assert_error(401, "invalid_credentials");
}

#[test]
fn x_forwarded_for_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
    let server = TestServer::start_with(|settings| {
        settings.limits.login_failures_per_address = 3;
    });
    let api = server.api();
    for n in 0..3 {
        failed_login_via(&api, n, &format!("203.0.113.{n}"))
            .assert_error(401, "invalid_credentials");
    }
    failed_login_via(&api, 3, "203.0.113.99").assert_error(429, "too_many_attempts");
}
