//! The real `backchannel` binary: data folder on first start, restarts,
//! the lock, signals, the `user add` command and what the logs never show.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use backchannel_tests::{PASSWORD, ServerProcess, SignedIn, backchannel_binary};
use serde_json::json;

fn user_add(data_dir: &Path, email: &str, role: &str, password: &str) -> Output {
    let mut child = Command::new(backchannel_binary())
        .args([
            "user",
            "add",
            "--email",
            email,
            "--name",
            "Operator Added",
            "--role",
            role,
            "--data",
        ])
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused command may exit before reading its password: a broken pipe
    // here is its refusal, judged by the exit status below.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes());
    child.wait_with_output().unwrap()
}

#[test]
fn first_start_creates_the_store_and_owner_only_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let server = ServerProcess::start(&data);
    for file in ["jwt_secret", "vapid_private_key"] {
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    assert!(data.join("store").is_dir());
    drop(server);
}

#[test]
fn a_restart_keeps_accounts_and_keys() {
    let folder = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(folder.path());
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    let public_key = api.get("/api/push/public-key", None).body["public_key"].clone();
    let (status, _) = server.terminate();
    assert!(status.success());

    let server = ServerProcess::start(folder.path());
    let api = server.api();
    assert_eq!(api.login("ada@example.org", PASSWORD).status, 200);
    assert_eq!(
        api.get("/api/push/public-key", None).body["public_key"],
        public_key
    );
    // The signing secret survived too: tokens issued before the restart still work.
    assert_eq!(
        api.get("/api/me", Some(&signed_in.access_token)).status,
        200
    );
}

#[test]
fn a_second_server_on_the_same_data_folder_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(folder.path());
    let Err(printed) = ServerProcess::try_start(folder.path()) else {
        panic!("a second server started on a held data folder");
    };
    assert!(
        printed.contains("in use by another running backchannel process"),
        "{printed}"
    );
    // The first server is unharmed.
    assert_eq!(first.api().get("/healthz", None).status, 200);
}

#[test]
fn sigterm_exits_zero_with_the_store_flushed() {
    let folder = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(folder.path());
    server.api().signed_up("ada@example.org");
    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("store flushed"), "{log}");
    let server = ServerProcess::start(folder.path());
    assert_eq!(server.api().login("ada@example.org", PASSWORD).status, 200);
}

#[test]
fn an_acknowledged_registration_survives_sigkill() {
    let folder = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(folder.path());
    let signed_in = server.api().signed_up("ada@example.org");
    let rotated = SignedIn::from(&server.api().post(
        "/api/auth/refresh",
        json!({"refresh_token": signed_in.refresh_token}),
        None,
    ));
    server.kill();
    let server = ServerProcess::start(folder.path());
    let api = server.api();
    assert_eq!(api.login("ada@example.org", PASSWORD).status, 200);
    // The acknowledged rotation survived as well: the new refresh token is current.
    let answer = api.post(
        "/api/auth/refresh",
        json!({"refresh_token": rotated.refresh_token}),
        None,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn user_add_creates_an_account_that_can_sign_in_with_its_role() {
    let folder = tempfile::tempdir().unwrap();
    let output = user_add(folder.path(), "boss@example.org", "manager", PASSWORD);
    assert!(output.status.success(), "{output:?}");
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(!id.is_empty());

    let server = ServerProcess::start(folder.path());
    let answer = server.api().login("boss@example.org", PASSWORD);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["user"]["id"], id.as_str());
    assert_eq!(answer.body["user"]["role"], "manager");
}

#[test]
fn user_add_refuses_while_a_server_holds_the_store() {
    let folder = tempfile::tempdir().unwrap();
    let _server = ServerProcess::start(folder.path());
    let output = user_add(folder.path(), "boss@example.org", "manager", PASSWORD);
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(
        printed.contains("in use by another running backchannel process"),
        "{printed}"
    );
}

#[test]
fn user_add_explains_a_weak_password_or_a_taken_email() {
    let folder = tempfile::tempdir().unwrap();
    let weak = user_add(folder.path(), "boss@example.org", "manager", "short");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 8 characters"));
    assert!(
        user_add(folder.path(), "boss@example.org", "host", PASSWORD)
            .status
            .success()
    );
    let taken = user_add(folder.path(), "BOSS@example.org", "member", PASSWORD);
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already exists"));
}

#[test]
fn the_log_never_shows_a_secret() {
    use base64::Engine;
    let folder = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(folder.path());
    let api = server.api();
    let signed_in = api.signed_up("ada@example.org");
    api.login("ada@example.org", "a wrong password");
    let refreshed = api.post(
        "/api/auth/refresh",
        json!({"refresh_token": signed_in.refresh_token}),
        None,
    );
    api.get(&format!("/healthz?token={}", signed_in.access_token), None);
    let (_, log) = server.terminate();
    let jwt_secret = std::fs::read_to_string(folder.path().join("jwt_secret")).unwrap();
    let vapid_private = std::fs::read_to_string(folder.path().join("vapid_private_key")).unwrap();
    let secrets = [
        PASSWORD.to_string(),
        "a wrong password".to_string(),
        signed_in.access_token,
        signed_in.refresh_token,
        refreshed.body["refresh_token"]
            .as_str()
            .unwrap()
            .to_string(),
        jwt_secret.trim().to_string(),
        vapid_private.trim().to_string(),
        base64::engine::general_purpose::STANDARD.encode(jwt_secret.trim()),
    ];
    assert!(
        log.contains("request"),
        "the log should show requests: {log}"
    );
    for secret in secrets {
        assert!(!log.contains(&secret), "the log shows a secret: {log}");
    }
}
