//! The link against the embedded broker the hub runs (rumqttd, in-process).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{MqttOptions, QoS};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::sync::mpsc;

use super::{Backoff, LinkConfig, LinkEvent, MqttLink, PublishError};

const WITHIN: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts rumqttd on `port` on a thread of its own (it lives until the test process ends).
fn start_broker(port: u16) {
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let cfg = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 10 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::spawn(move || {
        let _ = Broker::new(cfg).start();
    });
}

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

async fn next(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(WITHIN, rx.recv())
        .await
        .expect("no link event in time")
        .expect("link events closed")
}

/// The next event that is not a `Down` (the broker may still be starting).
async fn next_up_or_message(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    loop {
        match next(rx).await {
            LinkEvent::Down { .. } => continue,
            ev => return ev,
        }
    }
}

#[tokio::test]
async fn up_after_the_subscription_is_granted_then_messages_arrive() {
    let port = free_port();
    start_broker(port);
    let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    let cfg = LinkConfig::new(vec![("t/acks/#".into(), QoS::AtLeastOnce)], backoff);
    let (link, mut rx) = MqttLink::start(options("sub", port), cfg);
    assert_eq!(next_up_or_message(&mut rx).await, LinkEvent::Up);

    // Another link with no subscriptions is up at once and publishes to the first.
    let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    let (other, mut other_rx) =
        MqttLink::start(options("pub", port), LinkConfig::new(vec![], backoff));
    assert_eq!(next_up_or_message(&mut other_rx).await, LinkEvent::Up);
    other
        .publisher()
        .publish("t/acks/1", QoS::AtLeastOnce, b"hello".to_vec())
        .unwrap();
    match next_up_or_message(&mut rx).await {
        LinkEvent::Message { topic, payload } => {
            assert_eq!((topic.as_str(), &payload[..]), ("t/acks/1", &b"hello"[..]));
        }
        ev => panic!("expected the message, got {ev:?}"),
    }
    tokio::time::timeout(WITHIN, other.stop())
        .await
        .expect("stop hangs");
    tokio::time::timeout(WITHIN, link.stop())
        .await
        .expect("stop hangs");
}

#[tokio::test]
async fn without_a_broker_it_backs_off_within_bounds_and_comes_up_when_one_starts() {
    let port = free_port();
    let (min, max) = (Duration::from_millis(20), Duration::from_millis(160));
    let cfg = LinkConfig::new(
        vec![("t/x".into(), QoS::AtLeastOnce)],
        Backoff::new(min, max),
    );
    let (link, mut rx) = MqttLink::start(options("late", port), cfg);
    for _ in 0..5 {
        match next(&mut rx).await {
            LinkEvent::Down { error, retry_in } => {
                assert!(!error.is_empty());
                assert!(retry_in >= min && retry_in <= max, "{retry_in:?}");
            }
            ev => panic!("no broker yet, got {ev:?}"),
        }
    }
    start_broker(port);
    assert_eq!(next_up_or_message(&mut rx).await, LinkEvent::Up);
    tokio::time::timeout(WITHIN, link.stop())
        .await
        .expect("stop hangs");
}

#[tokio::test]
async fn a_link_that_never_connected_stops_at_once() {
    let port = free_port();
    let cfg = LinkConfig::new(
        vec![],
        Backoff::new(Duration::from_secs(30), Duration::from_secs(60)),
    );
    let (link, mut rx) = MqttLink::start(options("never", port), cfg);
    assert!(matches!(next(&mut rx).await, LinkEvent::Down { .. }));
    // It now sleeps 30 s before retrying; stop must not wait for that.
    tokio::time::timeout(Duration::from_secs(5), link.stop())
        .await
        .expect("stop waited for the backoff");
}

#[tokio::test]
async fn the_subscribe_delay_is_honoured_before_up() {
    let port = free_port();
    start_broker(port);
    let mut cfg = LinkConfig::new(
        vec![("t/y".into(), QoS::AtLeastOnce)],
        Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
    );
    cfg.subscribe_delay = Some(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let (link, mut rx) = MqttLink::start(options("slow", port), cfg);
    assert_eq!(next_up_or_message(&mut rx).await, LinkEvent::Up);
    // A lower bound only: the subscription cannot be granted before it is sent.
    assert!(started.elapsed() >= Duration::from_millis(300));
    link.stop().await;
}

/// A user that publishes once for every message it reads, on tiny channels, under a
/// burst (the hub's ingest task acking results). Were publishing to wait for room in
/// the request channel, the link's poller (waiting for room in the events channel,
/// so not polling, so not emptying the request channel) and the user (waiting in
/// publish, so not reading events) would wait on each other for ever.
#[tokio::test]
async fn a_user_that_publishes_for_every_message_cannot_wedge_the_link_under_a_burst() {
    const BURST: usize = 100;
    let port = free_port();
    start_broker(port);
    let backoff = || Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    let mut cfg = LinkConfig::new(vec![("t/burst/#".into(), QoS::AtLeastOnce)], backoff());
    cfg.requests = 1;
    cfg.events = 1;
    let (echo, mut rx) = MqttLink::start(options("echo", port), cfg);
    assert_eq!(next_up_or_message(&mut rx).await, LinkEvent::Up);
    let mut cfg = LinkConfig::new(vec![("t/echo/#".into(), QoS::AtLeastOnce)], backoff());
    cfg.requests = BURST + 8;
    let (source, mut source_rx) = MqttLink::start(options("source", port), cfg);
    assert_eq!(next_up_or_message(&mut source_rx).await, LinkEvent::Up);

    let run = async {
        let publisher = echo.publisher();
        for i in 0..BURST {
            source
                .publisher()
                .publish(format!("t/burst/{i}"), QoS::AtLeastOnce, vec![7u8; 256])
                .unwrap();
        }
        let (mut got, mut echoed, mut busy) = (0, 0, 0);
        while got < BURST {
            match rx.recv().await.expect("link events closed") {
                LinkEvent::Message { .. } => {
                    got += 1;
                    match publisher.publish("t/echo/x", QoS::AtLeastOnce, b"ack".to_vec()) {
                        Ok(()) => echoed += 1,
                        Err(PublishError::Busy) => busy += 1,
                        Err(e) => panic!("publishing failed: {e}"),
                    }
                }
                LinkEvent::Up => {}
                LinkEvent::Down { error, .. } => panic!("the link went down: {error}"),
            }
        }
        assert_eq!(echoed + busy, BURST);
        assert!(echoed > 0);

        // Still responsive both ways: a message after the burst comes in, and what
        // the user publishes for it goes out.
        source
            .publisher()
            .publish("t/burst/final", QoS::AtLeastOnce, b"final".to_vec())
            .unwrap();
        loop {
            match rx.recv().await.expect("link events closed") {
                LinkEvent::Message { topic, .. } if topic == "t/burst/final" => break,
                LinkEvent::Down { error, .. } => panic!("the link went down: {error}"),
                _ => {}
            }
        }
        loop {
            match publisher.publish("t/echo/final", QoS::AtLeastOnce, b"done".to_vec()) {
                Ok(()) => break,
                Err(PublishError::Busy) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => panic!("publishing failed: {e}"),
            }
        }
        loop {
            match source_rx.recv().await.expect("link events closed") {
                LinkEvent::Message { topic, .. } if topic == "t/echo/final" => break,
                LinkEvent::Down { error, .. } => panic!("the source went down: {error}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the link wedged: the user and the poller wait on each other");
    tokio::time::timeout(WITHIN, source.stop())
        .await
        .expect("stop hangs");
    tokio::time::timeout(WITHIN, echo.stop())
        .await
        .expect("stop hangs");
}

#[tokio::test]
async fn publishing_after_stop_or_to_a_wildcard_fails_at_once() {
    let port = free_port();
    let cfg = LinkConfig::new(
        vec![],
        Backoff::new(Duration::from_secs(30), Duration::from_secs(60)),
    );
    let (link, _rx) = MqttLink::start(options("gone", port), cfg);
    let publisher = link.publisher();
    assert!(matches!(
        publisher.publish("t/#", QoS::AtLeastOnce, b"x".to_vec()),
        Err(PublishError::InvalidTopic(_))
    ));
    link.stop().await;
    assert_eq!(
        publisher.publish("t/x", QoS::AtLeastOnce, b"x".to_vec()),
        Err(PublishError::Stopped)
    );
}
