//! The agent against the fake cloud served over HTTPS with a self-signed
//! certificate: without the CA file the handshake fails with a clear error;
//! with it the join, the desired-state poll and the heartbeat work.
//!
//! One test in its own binary: the CA file is a process-wide setting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;
use verge_agent::{AgentError, http, join};

#[tokio::test]
async fn https_join_needs_the_ca_file_and_then_the_agent_syncs() {
    let (tls, pem) = self_signed();
    let cloud = FakeCloud::start_tls(tls).await;
    assert!(cloud.url.starts_with("https://127.0.0.1:"), "{}", cloud.url);
    let dir = tempfile::tempdir().expect("tmp");

    // Mozilla's roots do not know the self-signed certificate.
    let err = join(&cloud.url, JOIN_TOKEN).await.expect_err("untrusted");
    assert!(matches!(err, AgentError::Http(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("tls handshake with 127.0.0.1:")
            && text.contains("invalid peer certificate")
            && text.contains("Mozilla's root certificates"),
        "{text}"
    );
    // The token was not used up by the failed attempt.
    assert!(cloud.state.joins.lock().unwrap().is_empty());

    // A file without a certificate is refused, and changes nothing.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "nothing here\n").expect("write");
    let e = http::set_ca_file(Some(&bad)).expect_err("no certificate");
    assert!(e.to_string().contains("bad.pem"), "{e}");
    assert_eq!(http::ca_file(), None);

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pem).expect("write");
    http::set_ca_file(Some(&ca)).expect("ca file");
    let creds = join(&cloud.url, JOIN_TOKEN).await.expect("join over https");
    assert_eq!(creds.node_id, NODE);
    assert_eq!(creds.cloud_url, cloud.url);
    assert_eq!(creds.ca_file.as_deref(), Some(ca.as_path()));

    // The agent long-polls and reports over the same TLS settings.
    let node = TestNode::new(dir.path()).await;
    let agent = node.agent(creds).await;
    eventually("a first report over https", || async {
        !cloud.reports().is_empty()
    })
    .await;
    let v = cloud.publish(full_state);
    eventually("the new version applied and reported", || async {
        cloud.reports().iter().any(|r| r.applied_version == v)
    })
    .await;
    agent.shutdown().await;
}
