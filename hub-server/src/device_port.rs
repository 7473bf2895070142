//! The embedded broker's public MQTT port. It is bound at start (a taken port fails the
//! start at once) but accepts devices only once the hub's own results subscription is
//! acknowledged: rumqttd appends a publish only to the logs of filters that exist when
//! it arrives, so a batch published before the hub subscribed was dropped (PUBACKed to
//! the device all the same), and the device sent it again only after its ack timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::gate::Gate;

pub enum DevicePort {
    /// TLS with client certificates, every packet checked (`gate`).
    Gate(Arc<Gate>, TcpListener),
    /// insecure-plaintext mode: bytes relayed to the broker unchanged.
    Plain(TcpListener, SocketAddr),
}

impl DevicePort {
    /// Starts accepting devices once `subscribed` fires; never if the hub stops first.
    pub fn open_when(self, subscribed: oneshot::Receiver<()>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = subscribed => if r.is_err() { return },
            }
            tracing::info!("hub subscribed to results; accepting device connections");
            match self {
                DevicePort::Gate(gate, listener) => gate.serve(listener, shutdown).await,
                DevicePort::Plain(listener, broker) => relay(listener, broker, shutdown).await,
            }
        });
    }
}

async fn relay(listener: TcpListener, broker: SocketAddr, shutdown: CancellationToken) {
    loop {
        let (mut dev, addr) = tokio::select! {
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
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut up = match tokio::net::TcpStream::connect(broker).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "embedded broker unreachable");
                    return;
                }
            };
            let _ = (dev.set_nodelay(true), up.set_nodelay(true));
            tokio::select! {
                _ = sd.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut dev, &mut up) => {}
            }
        });
    }
}
