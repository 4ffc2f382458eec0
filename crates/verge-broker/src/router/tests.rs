//! The router's replay of messages routed just before a subscription whose
//! SUBSCRIBE arrived first (`recent`): who gets what, once.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use verge_mqtt::{QoS, SubOptions};

use super::*;
use crate::durable::Confirm;
use crate::router::event::{ConnectReq, Kill};

fn router() -> Router {
    let cfg = RouterConfig {
        max_queued: 100,
        max_subscriptions: 100,
        max_persistent_sessions: 100,
        max_retained: 100,
        sys_interval: Duration::ZERO,
        slow_consumer_wait: Duration::from_secs(1),
    };
    Router::new(
        cfg,
        Arc::new(Stats::default()),
        Arc::new(AtomicUsize::new(0)),
        tokio::sync::broadcast::channel(16).0,
    )
}

fn connect(r: &mut Router, client_id: &str) -> SubKey {
    let (tx, mut rx) = oneshot::channel();
    r.handle(Event::Connect(ConnectReq {
        client_id: Arc::from(client_id),
        username: None,
        transport: "mqtt",
        clean_start: true,
        expiry: Duration::ZERO,
        at_limit: false,
        conn_id: 1,
        mailbox: Arc::new(Mailbox::new(64)),
        kill: Arc::new(Kill::default()),
        reply: tx,
    }));
    rx.try_recv().expect("connect reply").key
}

fn publish(r: &mut Router, from: &str, topic: &str, retain: bool, received: Instant) {
    let mut m = Message::local(topic, "m", QoS::AtLeastOnce, retain);
    m.origin = Arc::from(from);
    m.received = received;
    r.handle(Event::Publish(vec![(Arc::new(m), Confirm::none())]));
}

fn sub(filter: &str, qos: QoS) -> SubReq {
    SubReq {
        filter: filter.to_string(),
        options: SubOptions {
            qos,
            ..SubOptions::default()
        },
        id: None,
        refused: None,
    }
}

/// Subscribe with a SUBSCRIBE that arrived at `arrived`; what came with the
/// SUBACK (retained and replayed), as (topic, retain flag).
fn subscribe(
    r: &mut Router,
    key: SubKey,
    filters: Vec<SubReq>,
    arrived: Instant,
) -> Vec<(String, bool, QoS)> {
    let (tx, mut rx) = oneshot::channel();
    r.handle(Event::Subscribe {
        key,
        filters,
        arrived,
        reply: tx,
    });
    let (_, sent) = rx.try_recv().expect("subscribe reply");
    sent.into_iter()
        .map(|d| (d.msg.topic.to_string(), d.retain, d.qos))
        .collect()
}

#[test]
fn a_subscription_gets_what_arrived_after_its_subscribe_and_was_routed_before_it() {
    let mut r = router();
    let s = connect(&mut r, "s");
    connect(&mut r, "p");
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    publish(&mut r, "p", "a/before", false, t0);
    publish(&mut r, "p", "a/after", false, t0 + 2 * ms);
    publish(&mut r, "p", "b/after", false, t0 + 2 * ms);
    let got = subscribe(&mut r, s, vec![sub("a/#", QoS::AtMostOnce)], t0 + ms);
    assert_eq!(got, vec![("a/after".to_string(), false, QoS::AtMostOnce)]);
}

#[test]
fn no_replay_past_the_window_or_to_a_subscription_it_replaced() {
    let mut r = router();
    let s = connect(&mut r, "s");
    connect(&mut r, "p");
    let t0 = Instant::now();
    assert!(subscribe(&mut r, s, vec![sub("a", QoS::AtLeastOnce)], t0).is_empty());
    publish(&mut r, "p", "a", false, t0 + Duration::from_millis(1));
    // The subscription was in place: the message went to it already.
    assert!(subscribe(&mut r, s, vec![sub("a", QoS::AtLeastOnce)], t0).is_empty());
    // Nor through another filter of the session that matched it.
    assert!(subscribe(&mut r, s, vec![sub("#", QoS::AtLeastOnce)], t0).is_empty());
    let s2 = connect(&mut r, "s2");
    r.on_tick(Instant::now() + recent::WINDOW * 2);
    assert!(subscribe(&mut r, s2, vec![sub("a", QoS::AtLeastOnce)], t0).is_empty());
}

#[test]
fn overlapping_filters_of_one_subscribe_get_a_message_once_at_the_highest_qos() {
    let mut r = router();
    let s = connect(&mut r, "s");
    connect(&mut r, "p");
    let t0 = Instant::now();
    publish(&mut r, "p", "a/b", false, t0 + Duration::from_millis(1));
    let got = subscribe(
        &mut r,
        s,
        vec![sub("a/+", QoS::AtMostOnce), sub("#", QoS::AtLeastOnce)],
        t0,
    );
    assert_eq!(got, vec![("a/b".to_string(), false, QoS::AtLeastOnce)]);
}

#[test]
fn a_retained_message_goes_once_with_the_retained_ones() {
    let mut r = router();
    let s = connect(&mut r, "s");
    connect(&mut r, "p");
    let t0 = Instant::now();
    publish(&mut r, "p", "r", true, t0 + Duration::from_millis(1));
    let got = subscribe(&mut r, s, vec![sub("r", QoS::AtLeastOnce)], t0);
    assert_eq!(got, vec![("r".to_string(), true, QoS::AtLeastOnce)]);
}

#[test]
fn no_local_is_kept() {
    let mut r = router();
    let s = connect(&mut r, "s");
    let t0 = Instant::now();
    publish(&mut r, "s", "own", false, t0 + Duration::from_millis(1));
    let mut req = sub("own", QoS::AtMostOnce);
    req.options.no_local = true;
    assert!(subscribe(&mut r, s, vec![req], t0).is_empty());
}

#[test]
fn a_shared_group_gets_a_replay_only_when_it_had_no_members() {
    let mut r = router();
    let first = connect(&mut r, "first");
    let second = connect(&mut r, "second");
    connect(&mut r, "p");
    let t0 = Instant::now();
    let ms = Duration::from_millis(1);
    publish(&mut r, "p", "job", false, t0 + ms);
    let got = subscribe(
        &mut r,
        first,
        vec![sub("$share/g/job", QoS::AtMostOnce)],
        t0,
    );
    assert_eq!(got.len(), 1, "the group had nobody: its new member gets it");
    publish(&mut r, "p", "job", false, t0 + 2 * ms);
    // The group had a member, which took the second message.
    let got = subscribe(
        &mut r,
        second,
        vec![sub("$share/g/job", QoS::AtMostOnce)],
        t0,
    );
    assert!(got.is_empty(), "{got:?}");
}
