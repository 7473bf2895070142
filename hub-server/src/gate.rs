//! The MQTT gate: the embedded broker's public face. It terminates TLS with a
//! mandatory, registry-checked client certificate, then relays the connection to
//! rumqttd on loopback while reading every packet the device sends and closing the
//! connection on the first one outside its identity: a CONNECT with another client id,
//! a PUBLISH to any topic but its own results and uplink, a SUBSCRIBE to anything but its
//! own acks and downlink (`topics::device_publishes` / `device_subscribes`, the same rule
//! as deploy/mosquitto/pleura.acl).
//! Broker-to-device traffic is relayed untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pleura_shared::topics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::ca::Registry;
use crate::metrics::Metrics;
use crate::tls::peer_certificate;

/// How often an open connection's certificate is checked against the registry again,
/// so that revoking a device also closes the connection it already holds.
pub const RECHECK: Duration = Duration::from_secs(5);

/// Why the gate closed a device's connection. `label` is the metrics reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Denied {
    #[error("malformed MQTT packet: {0}")]
    Malformed(&'static str),
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("first packet must be CONNECT")]
    NotConnected,
    #[error("only MQTT 3.1.1 is spoken here (protocol level {0})")]
    Protocol(u8),
    #[error("client id {0:?} is not this device's")]
    ClientId(String),
    #[error("will messages are not allowed")]
    Will,
    #[error("publish to {0:?} is outside this device's results and uplink topics")]
    Publish(String),
    #[error("subscription to {0:?} is outside this device's acks and downlink")]
    Subscribe(String),
    #[error("packet type {0} may not come from a client")]
    PacketType(u8),
}

impl Denied {
    pub fn label(&self) -> &'static str {
        match self {
            Denied::Malformed(_) => "malformed",
            Denied::TooLarge(_) => "too_large",
            Denied::NotConnected | Denied::PacketType(_) | Denied::Protocol(_) => "protocol",
            Denied::ClientId(_) => "client_id",
            Denied::Will => "will",
            Denied::Publish(_) => "publish_topic",
            Denied::Subscribe(_) => "subscribe_topic",
        }
    }
}

/// A device's rights on the broker.
pub struct Scope {
    pub client_id: String,
    pub publish: [String; 2],
    pub subscribe: [String; 2],
}

impl Scope {
    pub fn device(clinic: &str, device: &str) -> Self {
        Self {
            client_id: topics::client_id(clinic, device),
            publish: topics::device_publishes(clinic, device),
            subscribe: topics::device_subscribes(clinic, device),
        }
    }
}

/// Length of the first complete packet in `buf` (fixed header included), if any.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, Denied> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + remaining;
            if total > max {
                return Err(Denied::TooLarge(total));
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(Denied::Malformed("remaining length longer than 4 bytes"))
}

fn string_at(body: &[u8], at: usize) -> Result<(&str, usize), Denied> {
    let len = body
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or(Denied::Malformed("truncated string length"))?;
    let s = body
        .get(at + 2..at + 2 + len)
        .ok_or(Denied::Malformed("truncated string"))?;
    let s = std::str::from_utf8(s).map_err(|_| Denied::Malformed("string is not UTF-8"))?;
    Ok((s, at + 2 + len))
}

/// Checks one complete client-to-broker packet against `scope`. `connected` says
/// whether CONNECT has been seen.
pub fn inspect(packet: &[u8], scope: &Scope, connected: bool) -> Result<(), Denied> {
    let kind = packet[0] >> 4;
    let header = 1
        + packet[1..]
            .iter()
            .position(|b| b & 0x80 == 0)
            .ok_or(Denied::Malformed("remaining length"))?
        + 1;
    let body = &packet[header..];
    match (kind, connected) {
        (1, false) => {
            let (name, at) = string_at(body, 0)?;
            let level = *body.get(at).ok_or(Denied::Malformed("truncated CONNECT"))?;
            if name != "MQTT" || level != 4 {
                return Err(Denied::Protocol(level));
            }
            let flags = *body
                .get(at + 1)
                .ok_or(Denied::Malformed("truncated CONNECT"))?;
            if flags & 0x04 != 0 {
                return Err(Denied::Will);
            }
            let (client_id, _) = string_at(body, at + 4)?;
            if client_id != scope.client_id {
                return Err(Denied::ClientId(client_id.chars().take(128).collect()));
            }
            Ok(())
        }
        (_, false) => Err(Denied::NotConnected),
        (3, true) => {
            let (topic, _) = string_at(body, 0)?;
            if !scope.publish.iter().any(|t| t == topic) {
                return Err(Denied::Publish(topic.chars().take(128).collect()));
            }
            Ok(())
        }
        (8, true) => {
            let mut at = 2; // packet identifier
            if body.len() <= at {
                return Err(Denied::Malformed("SUBSCRIBE without filters"));
            }
            while at < body.len() {
                let (filter, next) = string_at(body, at)?;
                if !scope.subscribe.iter().any(|t| t == filter) {
                    return Err(Denied::Subscribe(filter.chars().take(128).collect()));
                }
                at = next + 1; // requested QoS
            }
            Ok(())
        }
        // PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBSCRIBE, PINGREQ, DISCONNECT.
        (4..=7 | 10 | 12 | 14, true) => Ok(()),
        (k, _) => Err(Denied::PacketType(k)),
    }
}

pub struct Gate {
    pub acceptor: TlsAcceptor,
    /// rumqttd's loopback listener.
    pub broker: SocketAddr,
    pub max_packet: usize,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
}

impl Gate {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let gate = self.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                if let Err(reason) = gate.connection(tcp, sd).await {
                    gate.metrics.gate_refuse(reason.0);
                    tracing::warn!(%addr, reason = %reason.1, "MQTT connection refused");
                }
            });
        }
    }

    async fn connection(
        &self,
        tcp: TcpStream,
        shutdown: CancellationToken,
    ) -> Result<(), (&'static str, String)> {
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp))
            .await
            .map_err(|_| ("tls", "TLS handshake timed out".to_string()))?
            .map_err(|e| ("tls", format!("TLS handshake: {e}")))?;
        let (clinic, device, serial) = peer_certificate(tls.get_ref().1.peer_certificates())
            .ok_or(("tls", "no device certificate".to_string()))?;
        let scope = Scope::device(&clinic, &device);
        let upstream = TcpStream::connect(self.broker)
            .await
            .map_err(|e| ("broker", format!("embedded broker unreachable: {e}")))?;
        let _ = upstream.set_nodelay(true);
        let (mut dev_rd, mut dev_wr) = tokio::io::split(tls);
        let (mut up_rd, mut up_wr) = upstream.into_split();
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut up_rd, &mut dev_wr).await;
            let _ = dev_wr.shutdown().await;
        });
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        let mut connected = false;
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        let result = loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = recheck.tick() => match self.registry.trusted(&clinic, &device, Some(&serial)) {
                    Ok(_) => continue,
                    Err(e) => break Err(("revoked", format!("closing an open connection: {e}"))),
                },
                r = dev_rd.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break Ok(()),
                    Ok(n) => n,
                },
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut verdict = Ok(());
            let mut used = 0;
            while let Some(len) = match frame_len(&buf[used..], self.max_packet) {
                Ok(l) => l,
                Err(d) => {
                    verdict = Err(d);
                    None
                }
            } {
                if let Err(d) = inspect(&buf[used..used + len], &scope, connected) {
                    verdict = Err(d);
                    break;
                }
                connected = true;
                used += len;
            }
            // Everything inspected so far goes through, even if a later packet in the
            // same read is refused: it was legitimate.
            if used > 0 && up_wr.write_all(&buf[..used]).await.is_err() {
                break Ok(());
            }
            buf.drain(..used);
            if let Err(d) = verdict {
                break Err((d.label(), format!("{clinic}/device/{device}: {d}")));
            }
        };
        let _ = up_wr.shutdown().await;
        down.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
        let mut v = vec![first];
        let mut n = body.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            v.push(b);
            if n == 0 {
                break;
            }
        }
        v.extend(body);
        v
    }

    fn connect(client_id: &str, flags: u8) -> Vec<u8> {
        let mut b = string("MQTT");
        b.extend([4, flags, 0, 20]);
        b.extend(string(client_id));
        packet(0x10, b)
    }

    #[test]
    fn a_device_may_only_act_as_itself() {
        let s = Scope::device("c1", "d1");
        let me = topics::client_id("c1", "d1");
        assert_eq!(inspect(&connect(&me, 0x02), &s, false), Ok(()));
        assert_eq!(
            inspect(&connect(&topics::client_id("c1", "d2"), 0x02), &s, false),
            Err(Denied::ClientId("c1.d2".into()))
        );
        assert_eq!(inspect(&connect(&me, 0x06), &s, false), Err(Denied::Will));
        assert_eq!(
            inspect(&connect(&me, 2), &s, true).unwrap_err().label(),
            "protocol"
        );

        let publish = |t: &str| packet(0x32, [string(t), vec![0, 1], b"payload".to_vec()].concat());
        assert_eq!(
            inspect(&publish(&topics::results("c1", "d1")), &s, true),
            Ok(())
        );
        assert_eq!(
            inspect(&publish(&topics::results("c1", "d1")), &s, false),
            Err(Denied::NotConnected)
        );
        assert_eq!(
            inspect(&publish(&topics::uplink("c1", "d1")), &s, true),
            Ok(())
        );
        for t in [
            topics::results("c1", "d2"),
            topics::results("c2", "d1"),
            topics::acks("c1", "d1"),
            topics::uplink("c1", "d2"),
            topics::downlink("c1", "d1"),
            topics::downlink("c1", "d2"),
        ] {
            assert_eq!(
                inspect(&publish(&t), &s, true),
                Err(Denied::Publish(t.clone()))
            );
        }
        let subscribe = |fs: &[&str]| {
            let mut b = vec![0, 7];
            for f in fs {
                b.extend(string(f));
                b.push(1);
            }
            packet(0x82, b)
        };
        let mine = topics::acks("c1", "d1");
        assert_eq!(inspect(&subscribe(&[&mine]), &s, true), Ok(()));
        let both = [mine.as_str(), &topics::downlink("c1", "d1")];
        assert_eq!(inspect(&subscribe(&both), &s, true), Ok(()));
        for f in [
            "pleura/v1/clinic/+/device/+/acks",
            "pleura/v1/clinic/c1/device/+/downlink",
            "#",
            &topics::acks("c1", "d2"),
            &topics::downlink("c1", "d2"),
            &topics::uplink("c1", "d1"),
        ] {
            assert_eq!(
                inspect(&subscribe(&[&mine, f]), &s, true),
                Err(Denied::Subscribe(f.into()))
            );
        }
        assert_eq!(inspect(&packet(0xc0, vec![]), &s, true), Ok(()), "PINGREQ");
        assert_eq!(
            inspect(&packet(0x20, vec![0, 0]), &s, true),
            Err(Denied::PacketType(2))
        );
    }

    #[test]
    fn framing_is_bounded_and_incremental() {
        let p = connect("x", 2);
        assert_eq!(frame_len(&p[..1], 1000), Ok(None));
        assert_eq!(frame_len(&p[..p.len() - 1], 1000), Ok(None));
        assert_eq!(frame_len(&p, 1000), Ok(Some(p.len())));
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0x7f], 1000),
            Err(Denied::TooLarge(2_097_155))
        );
        assert!(matches!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff], 1 << 30),
            Err(Denied::Malformed(_))
        ));
        // Truncated strings inside a framed packet are refused, not read past.
        assert!(matches!(
            inspect(&[0x30, 1, 0], &Scope::device("c", "d"), true),
            Err(Denied::Malformed(_))
        ));
    }
}
