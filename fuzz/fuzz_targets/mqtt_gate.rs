//! The MQTT gate's packet checks (`frame_len`, `inspect`) on a device's byte stream,
//! checked against the broker behind it: for every packet the gate lets through,
//! rumqttd's own parser must see the same packet boundaries and nothing outside the
//! device's scope (its client id, no will, its results topic, its acks filter).
//! A difference would let a device smuggle a packet past the gate.
#![no_main]
use bytes::BytesMut;
use hub_server::gate::{frame_len, inspect, Scope};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Error, Packet, Protocol};

const MAX: usize = 64 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scope = Scope::device("c1", "d1");
    let mut broker_view = BytesMut::from(data);
    let mut connected = false;
    let mut used = 0;
    while let Ok(Some(len)) = frame_len(&data[used..], MAX) {
        let verdict = inspect(&data[used..used + len], &scope, connected);
        let before = broker_view.len();
        let parsed = V4.read_mut(&mut broker_view, MAX);
        if verdict.is_err() {
            return; // the gate closes the connection here
        }
        let packet = match parsed {
            Ok(p) => p,
            Err(Error::InsufficientBytes(n)) => {
                panic!("gate passed a {len}-byte packet the broker wants {n} more bytes for")
            }
            Err(_) => return, // the broker closes the connection itself
        };
        assert_eq!(before - broker_view.len(), len, "packet boundaries differ");
        match packet {
            Packet::Connect(c, _, will, _, _) => {
                assert!(!connected, "second CONNECT passed");
                assert_eq!(c.client_id, scope.client_id);
                assert!(will.is_none(), "will passed");
            }
            Packet::Publish(p, _) => assert_eq!(&p.topic[..], scope.publish.as_bytes()),
            Packet::Subscribe(s, _) => {
                for f in s.filters {
                    assert_eq!(f.path, scope.subscribe);
                }
            }
            _ => {}
        }
        connected = true;
        used += len;
    }
});
