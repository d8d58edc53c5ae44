//! SPEC §2 rows for `/api/me` documents, the team, roles, promote, needs and
//! metrics, over HTTP. What these do to documents (index, inbox, directory,
//! promoted posts) is checked with the stock client in `tests/node/kept/`.

#![allow(clippy::unwrap_used)]

use backchannel_tests::{Role, TestServer};
use serde_json::json;

const MEG: &str = "meg@example.org";
const HAL: &str = "hal@example.org";

fn community() -> TestServer {
    TestServer::start_with_accounts(&[
        (MEG, "Meg the manager", Role::Manager),
        (HAL, "Hal the host", Role::Host),
    ])
}

#[test]
fn me_gives_the_four_start_documents_as_automerge_urls() {
    let server = community();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    let bob = api.signed_up("bob@example.org");
    let first = api.get("/api/me", Some(&ada.access_token));
    assert_eq!(first.status, 200, "{first:?}");
    for name in ["index", "directory", "inbox", "drafts"] {
        let url = first.body["docs"][name].as_str().unwrap();
        assert!(url.starts_with("automerge:"), "{name}: {url}");
    }
    let again = api.get("/api/me", Some(&ada.access_token));
    assert_eq!(again.body["docs"], first.body["docs"]);
    let other = api.get("/api/me", Some(&bob.access_token));
    assert_eq!(other.body["docs"]["index"], first.body["docs"]["index"]);
    assert_eq!(
        other.body["docs"]["directory"],
        first.body["docs"]["directory"]
    );
    assert_ne!(other.body["docs"]["inbox"], first.body["docs"]["inbox"]);
    assert_ne!(other.body["docs"]["drafts"], first.body["docs"]["drafts"]);
}

#[test]
fn the_team_lists_managers_then_hosts_with_their_contact_cards() {
    let server = community();
    let api = server.api();
    let meg = api.signed_in(MEG);
    let answer = api.put(
        "/api/me/contact-card",
        json!({"text": "Weekdays 9 to 5, reply within a day"}),
        Some(&meg.access_token),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let ada = api.signed_up("ada@example.org");
    let team = api.get("/api/team", Some(&ada.access_token));
    assert_eq!(team.status, 200, "{team:?}");
    let team = team.body.as_array().unwrap().clone();
    assert_eq!(team.len(), 2, "{team:?}");
    assert_eq!(team[0]["role"], "manager");
    assert_eq!(
        team[0]["contact_card"],
        "Weekdays 9 to 5, reply within a day"
    );
    assert_eq!(team[1]["role"], "host");
    assert!(team[1]["contact_card"].is_null());
    assert!(team.iter().all(|member| member.get("email").is_none()));
}

#[test]
fn a_member_has_no_contact_card_to_set() {
    let server = community();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    api.put(
        "/api/me/contact-card",
        json!({"text": "hi"}),
        Some(&ada.access_token),
    )
    .assert_error(403, "forbidden");
}

#[test]
fn a_contact_card_over_two_thousand_characters_is_refused() {
    let server = community();
    let api = server.api();
    let hal = api.signed_in(HAL);
    api.put(
        "/api/me/contact-card",
        json!({"text": "x".repeat(2_001)}),
        Some(&hal.access_token),
    )
    .assert_error(400, "invalid_contact_card");
}

#[test]
fn a_manager_changes_a_role_and_it_applies_to_the_next_request() {
    let server = community();
    let api = server.api();
    let meg = api.signed_in(MEG);
    let ada = api.signed_up("ada@example.org");
    api.get("/api/needs", Some(&ada.access_token))
        .assert_error(403, "forbidden");
    let answer = api.put(
        &format!("/api/users/{}/role", ada.user_id),
        json!({"role": "manager"}),
        Some(&meg.access_token),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["role"], "manager");
    assert_eq!(api.get("/api/needs", Some(&ada.access_token)).status, 200);
}

#[test]
fn only_managers_change_roles() {
    let server = community();
    let api = server.api();
    let ada = api.signed_up("ada@example.org");
    let hal = api.signed_in(HAL);
    for token in [&ada.access_token, &hal.access_token] {
        api.put(
            &format!("/api/users/{}/role", ada.user_id),
            json!({"role": "manager"}),
            Some(token),
        )
        .assert_error(403, "forbidden");
    }
}

#[test]
fn an_unknown_role_or_user_is_refused() {
    let server = community();
    let api = server.api();
    let meg = api.signed_in(MEG);
    let ada = api.signed_up("ada@example.org");
    api.put(
        &format!("/api/users/{}/role", ada.user_id),
        json!({"role": "admin"}),
        Some(&meg.access_token),
    )
    .assert_error(400, "invalid_role");
    api.put(
        "/api/users/no-such-user/role",
        json!({"role": "host"}),
        Some(&meg.access_token),
    )
    .assert_error(404, "user_not_found");
}

#[test]
fn the_last_manager_cannot_step_down() {
    let server = community();
    let api = server.api();
    let meg = api.signed_in(MEG);
    api.put(
        &format!("/api/users/{}/role", meg.user_id),
        json!({"role": "member"}),
        Some(&meg.access_token),
    )
    .assert_error(409, "last_manager");
}

#[test]
fn needs_metrics_and_promote_are_for_managers_only() {
    let server = community();
    let api = server.api();
    let hal = api.signed_in(HAL);
    api.get("/api/needs", Some(&hal.access_token))
        .assert_error(403, "forbidden");
    api.get("/api/metrics/community", Some(&hal.access_token))
        .assert_error(403, "forbidden");
    api.post(
        "/api/conversations/4NMNnkMhL8jXrdJ9jamS58PAVdXu/promote",
        json!({}),
        Some(&hal.access_token),
    )
    .assert_error(403, "forbidden");
}

#[test]
fn needs_in_an_empty_period_count_zero_in_json_and_csv() {
    let server = community();
    let api = server.api();
    let meg = api.signed_in(MEG);
    let answer = api.get(
        "/api/needs?since=2026-01-01&until=2026-02-01",
        Some(&meg.access_token),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["total"], 0);
    assert_eq!(answer.body["by_kind"]["question"], 0);
    assert_eq!(answer.body["by_state"]["open"], 0);
    let csv = api
        .raw()
        .get(api.url("/api/needs?format=csv"))
        .bearer_auth(&meg.access_token)
        .send()
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().unwrap();
    assert!(text.starts_with("dimension,value,count\n"), "{text}");
    assert!(text.contains("kind,report,0\n"), "{text}");
}

#[test]
fn needs_refuse_a_bad_period_or_format() {
    let server = community();
    let api = server.api();
    let token = api.signed_in(MEG).access_token;
    for query in [
        "since=yesterday",
        "since=2026-02-01&until=2026-01-01",
        "format=xml",
    ] {
        api.get(&format!("/api/needs?{query}"), Some(&token))
            .assert_error(400, "invalid_query");
    }
}

#[test]
fn metrics_give_the_weeks_asked_for_oldest_first() {
    let server = community();
    let api = server.api();
    let token = api.signed_in(MEG).access_token;
    let answer = api.get("/api/metrics/community?weeks=4", Some(&token));
    assert_eq!(answer.status, 200, "{answer:?}");
    let weeks = answer.body["weeks"].as_array().unwrap();
    assert_eq!(weeks.len(), 4);
    let starts: Vec<i64> = weeks
        .iter()
        .map(|week| week["week_start"].as_i64().unwrap())
        .collect();
    assert!(
        starts
            .windows(2)
            .all(|pair| pair[1] - pair[0] == 7 * 86_400_000)
    );
    for field in [
        "public_posts",
        "public_replies",
        "back_channel_messages",
        "conversations_opened",
        "conversations_promoted",
    ] {
        assert_eq!(weeks[3][field], 0, "{field}");
    }
    for silly in ["0", "105", "many"] {
        api.get(
            &format!("/api/metrics/community?weeks={silly}"),
            Some(&token),
        )
        .assert_error(400, "invalid_query");
    }
}

#[test]
fn promoting_something_that_is_not_a_conversation_is_not_found() {
    let server = community();
    let api = server.api();
    let token = api.signed_in(MEG).access_token;
    api.post(
        "/api/conversations/4NMNnkMhL8jXrdJ9jamS58PAVdXu/promote",
        json!({}),
        Some(&token),
    )
    .assert_error(404, "not_found");
    api.post(
        "/api/conversations/not-an-id/promote",
        json!({}),
        Some(&token),
    )
    .assert_error(400, "invalid_document_id");
}
