//! The external broker's hooks (`/api/broker/authn`, `/api/broker/authz`)
//! and the Mosquitto dynamic-security provisioning's failure paths (the
//! working path is `tests/interop/test_broker_dynsec.py`, against a real
//! Mosquitto). Each test runs on SQLite, and on PostgreSQL when
//! `VERGE_TEST_POSTGRES_URL` is set.

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, harness_on, harness_with};
use serde_json::{Value, json};
use verge_cloud::CloudConfig;
use verge_cloud::config::Provision;

both!(
    the_hooks_take_a_broker_token_and_it_takes_nothing_else,
    authn_allows_a_joined_node_with_its_current_secret_only,
    authz_keeps_each_node_to_its_own_topics,
);

/// `both!` for tests that configure the cloud themselves: they get
/// whether to run on PostgreSQL.
macro_rules! both_configured {
    ($($name:ident),* $(,)?) => {
        mod sqlite_configured {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(false).await; })*
        }
        mod postgres_configured {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(true).await; })*
        }
    };
}

both_configured!(
    the_cloud_user_logs_in_with_its_password_and_no_node_takes_its_name,
    an_unreachable_broker_fails_the_join_with_503_and_keeps_the_token,
);

async fn token(h: &Harness, scope: &str) -> String {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": format!("t-{scope}"), "scope": scope})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().expect("token").to_owned()
}

async fn hook(h: &Harness, token: &str, path: &str, body: Value) -> Value {
    let (s, v) = h
        .call_as(
            Method::POST,
            path,
            Some(&format!("Bearer {token}")),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{path}: {v}");
    v
}

/// `user` connecting with its own client id (`verge-node-{user}`, or
/// `verge-cloud-r1` for the cloud user `verge-cloud`).
async fn authn(h: &Harness, token: &str, user: &str, password: &str) -> Value {
    let clientid = if user == "verge-cloud" {
        "verge-cloud-r1".to_owned()
    } else {
        format!("verge-node-{user}")
    };
    authn_as(h, token, user, password, &clientid).await
}

async fn authn_as(h: &Harness, token: &str, user: &str, password: &str, clientid: &str) -> Value {
    hook(
        h,
        token,
        "/api/broker/authn",
        json!({"username": user, "password": password, "clientid": clientid}),
    )
    .await
}

async fn authz(h: &Harness, token: &str, user: &str, action: &str, topic: &str) -> bool {
    let v = hook(
        h,
        token,
        "/api/broker/authz",
        json!({"username": user, "clientid": "c", "action": action, "topic": topic}),
    )
    .await;
    match v["result"].as_str() {
        Some("allow") => true,
        Some("deny") => {
            assert_eq!(v, json!({"result": "deny"}), "a denial says nothing more");
            false
        }
        _ => panic!("not a result: {v}"),
    }
}

fn deny() -> Value {
    json!({"result": "deny"})
}

fn allow() -> Value {
    json!({"result": "allow", "is_superuser": false})
}

async fn the_hooks_take_a_broker_token_and_it_takes_nothing_else(h: Harness) {
    let body = json!({"username": "n", "password": "p"});
    let (s, v) = h
        .call_as(Method::POST, "/api/broker/authn", None, Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    for scope in ["read", "admin"] {
        let t = token(&h, scope).await;
        let (s, v) = h
            .call_as(
                Method::POST,
                "/api/broker/authz",
                Some(&format!("Bearer {t}")),
                Some(json!({"username": "n", "action": "publish", "topic": "t"})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{scope}: {v}");
    }
    let broker = token(&h, "broker").await;
    for (method, path) in [(Method::GET, "/api/nodes"), (Method::GET, "/api/tokens")] {
        let (s, v) = h
            .call_as(method, path, Some(&format!("Bearer {broker}")), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    // a body that is not the hook's is a 400, not an answer
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/broker/authz",
            Some(&format!("Bearer {broker}")),
            Some(json!({"username": "n"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(authn(&h, &broker, "n", "p").await, deny());
}

async fn authn_allows_a_joined_node_with_its_current_secret_only(h: Harness) {
    let broker = token(&h, "broker").await;
    let (n1, secret) = h.joined_node("n1").await;
    assert_eq!(authn(&h, &broker, &n1, &secret).await, allow());
    // twice: the second answer comes from the cache, and is the same
    assert_eq!(authn(&h, &broker, &n1, &secret).await, allow());
    // The client id is tied to the username: no other node's, no
    // replica's, nothing else (also when the secret is cached).
    for clientid in [
        "verge-node-other".to_owned(),
        "verge-cloud-r1".to_owned(),
        format!("verge-node-{n1}-x"),
        format!("c-{n1}"),
        String::new(),
    ] {
        assert_eq!(
            authn_as(&h, &broker, &n1, &secret, &clientid).await,
            deny(),
            "{clientid}"
        );
    }
    assert_eq!(authn(&h, &broker, &n1, "wrong").await, deny());
    assert_eq!(authn(&h, &broker, &n1, "").await, deny());
    assert_eq!(authn(&h, &broker, "nobody", &secret).await, deny());
    assert_eq!(authn(&h, &broker, "+", &secret).await, deny());
    // a node created but not joined has no secret yet
    let (s, _) = h
        .call(Method::POST, "/api/nodes", Some(json!({"name": "pending"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(authn(&h, &broker, "pending", "").await, deny());
    assert_eq!(authn(&h, &broker, "pending", "x").await, deny());
    // a rejoin replaces the secret: the cached old one no longer passes
    let (s, v) = h
        .call(Method::POST, &format!("/api/nodes/{n1}/join-token"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/agent/join",
            None,
            Some(json!({"token": v["join_token"], "hostname": "h"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let new_secret = v["secret"].as_str().expect("secret").to_owned();
    assert_eq!(authn(&h, &broker, &n1, &secret).await, deny());
    assert_eq!(authn(&h, &broker, &n1, &new_secret).await, allow());
    // a deleted node is refused at once
    let (s, v) = h
        .call(Method::DELETE, &format!("/api/nodes/{n1}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(authn(&h, &broker, &n1, &new_secret).await, deny());
    // no cloud user is configured: its would-be name is nobody
    assert_eq!(authn(&h, &broker, "", "").await, deny());
}

async fn authz_keeps_each_node_to_its_own_topics(h: Harness) {
    let broker = token(&h, "broker").await;
    let (n1, _) = h.joined_node("n1").await;
    let (n2, _) = h.joined_node("n2").await;
    let allowed = [
        ("publish", "nodes/n1/up/x"),
        ("publish", "nodes/n1/up/devices/d1/telemetry"),
        ("subscribe", "nodes/n1/down/#"),
        ("subscribe", "nodes/n1/down/devices/+/commands/#"),
    ];
    for (action, topic) in allowed {
        assert!(
            authz(&h, &broker, &n1, action, topic).await,
            "{action} {topic}"
        );
    }
    let denied = [
        ("publish", "nodes/n2/up/x"),
        ("publish", "nodes/n1/down/x"),
        ("subscribe", "nodes/+/down/#"),
        ("subscribe", "nodes/n2/down/#"),
        ("subscribe", "nodes/n1/#"),
        ("subscribe", "#"),
        ("subscribe", "$share/g/nodes/+/up/#"),
        ("all", "nodes/n1/up/x"),
        ("PUBLISH", "nodes/n1/up/x"),
    ];
    for (action, topic) in denied {
        assert!(
            !authz(&h, &broker, &n1, action, topic).await,
            "{action} {topic}"
        );
    }
    assert!(authz(&h, &broker, &n2, "publish", "nodes/n2/up/x").await);
    // a username that is no joined node gets nothing, even its "own" topics
    assert!(!authz(&h, &broker, "ghost", "publish", "nodes/ghost/up/x").await);
    let (s, _) = h
        .call(Method::POST, "/api/nodes", Some(json!({"name": "pending"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(!authz(&h, &broker, "pending", "subscribe", "nodes/pending/down/#").await);
    // without `mqtt.external.username` there is no cloud user
    assert!(
        !authz(
            &h,
            &broker,
            "",
            "subscribe",
            "$share/verge-cloud/nodes/+/up/#"
        )
        .await
    );
    let (s, _) = h.call(Method::DELETE, "/api/nodes/n2", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!authz(&h, &broker, &n2, "publish", "nodes/n2/up/x").await);
}

/// A file holding `text` with mode 0600.
fn private_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

async fn the_cloud_user_logs_in_with_its_password_and_no_node_takes_its_name(postgres: bool) {
    let files = tempfile::tempdir().expect("tempdir");
    let pw = private_file(files.path(), "cloud-pw", "cloud-secret\n");
    let Some(h) = harness_with(postgres, |c: &mut CloudConfig| {
        c.mqtt.external.username = "verge-cloud".into();
        c.mqtt.external.password_file = Some(pw.clone());
        c.mqtt.external.admin_username = "mosq-admin".into();
    })
    .await
    else {
        return;
    };
    let broker = token(&h, "broker").await;
    assert_eq!(
        authn(&h, &broker, "verge-cloud", "cloud-secret").await,
        allow()
    );
    assert_eq!(
        authn(&h, &broker, "verge-cloud", "cloud-secre").await,
        deny()
    );
    assert_eq!(authn(&h, &broker, "verge-cloud", "").await, deny());
    for clientid in ["verge-node-verge-cloud", "verge-cloud-", "x", ""] {
        assert_eq!(
            authn_as(&h, &broker, "verge-cloud", "cloud-secret", clientid).await,
            deny(),
            "{clientid}"
        );
    }
    for (action, topic) in [
        ("subscribe", "$share/verge-cloud/nodes/+/up/#"),
        ("subscribe", "nodes/+/up/$verge/store-reply/+"),
        ("publish", "nodes/n1/down/devices/d1/commands/reboot"),
    ] {
        assert!(
            authz(&h, &broker, "verge-cloud", action, topic).await,
            "{action} {topic}"
        );
    }
    for (action, topic) in [
        ("subscribe", "#"),
        ("subscribe", "nodes/+/down/#"),
        ("publish", "nodes/n1/up/x"),
        ("publish", "nodes/+/down/x"),
    ] {
        assert!(
            !authz(&h, &broker, "verge-cloud", action, topic).await,
            "{action} {topic}"
        );
    }
    let (s, v) = h
        .call(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "verge-cloud"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // nor the dynamic-security admin's (a node's broker client would
    // replace it)
    let (s, v) = h
        .call(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "mosq-admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // a password file others may read is refused at start, naming the key
    let loose = files.path().join("loose");
    std::fs::write(&loose, "x").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let mut cfg = CloudConfig::default();
    cfg.cloud.data_dir = files.path().join("data2");
    cfg.mqtt.external.username = "verge-cloud".into();
    cfg.mqtt.external.password_file = Some(loose);
    let err = verge_cloud::Cloud::open(cfg).await.err().expect("refused");
    assert!(
        err.to_string().contains("mqtt.external.password_file"),
        "{err}"
    );
}

async fn an_unreachable_broker_fails_the_join_with_503_and_keeps_the_token(postgres: bool) {
    let files = tempfile::tempdir().expect("tempdir");
    let pw = private_file(files.path(), "admin-pw", "admin-secret\n");
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let Some(h) = harness_with(postgres, |c: &mut CloudConfig| {
        c.mqtt.external.provision = Provision::MosquittoDynsec;
        c.mqtt.external.admin_url = format!("mqtt://127.0.0.1:{port}");
        c.mqtt.external.admin_username = "admin".into();
        c.mqtt.external.admin_password_file = Some(pw.clone());
    })
    .await
    else {
        return;
    };
    let (s, v) = h
        .call(Method::POST, "/api/nodes", Some(json!({"name": "n1"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let join = json!({"token": v["join_token"], "hostname": "h"});
    for _ in 0..2 {
        // the second attempt is refused the same way, not as a spent token
        let (s, v) = h
            .call_as(Method::POST, "/api/agent/join", None, Some(join.clone()))
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["error"]["code"], "broker_unavailable", "{v}");
    }
    let (s, v) = h.call(Method::GET, "/api/nodes/n1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "pending", "{v}");
    // and a delete that cannot reach the broker deletes nothing
    let (s, v) = h.call(Method::DELETE, "/api/nodes/n1", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (s, _) = h.call(Method::GET, "/api/nodes/n1", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn provisioning_settings_are_checked_at_start() {
    let files = tempfile::tempdir().expect("tempdir");
    let pw = private_file(files.path(), "admin-pw", "admin-secret\n");
    type Spoil = fn(&mut CloudConfig);
    let cases: [(&str, Spoil); 3] = [
        ("mqtt.external.admin_url", |c| {
            c.mqtt.external.admin_url = "mqtts://h:1".into()
        }),
        ("mqtt.external.admin_username", |c| {
            c.mqtt.external.admin_username.clear()
        }),
        ("mqtt.external.admin_password_file", |c| {
            c.mqtt.external.admin_password_file = None
        }),
    ];
    for (i, (key, spoil)) in cases.into_iter().enumerate() {
        let mut cfg = CloudConfig::default();
        cfg.cloud.data_dir = files.path().join(format!("data{i}"));
        cfg.mqtt.external.provision = Provision::MosquittoDynsec;
        cfg.mqtt.external.admin_url = "mqtt://127.0.0.1:1883".into();
        cfg.mqtt.external.admin_username = "admin".into();
        cfg.mqtt.external.admin_password_file = Some(pw.clone());
        spoil(&mut cfg);
        let err = verge_cloud::Cloud::open(cfg).await.err().expect("refused");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}
