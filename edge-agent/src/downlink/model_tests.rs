//! The downlink receiver persists an offer (and a command) before the receipt, takes a
//! repeat as a duplicate, and forwards chunks to the worker.

use std::sync::Arc;

use pleura_shared::signing::BatchSigner;
use pleura_shared::wire::{downlink, Downlink, ModelChunk, SignedDownlink};
use prost::Message;
use tokio::sync::mpsc;

use super::receive::Outcome;
use super::{open_stores, HubTrust, Receiver};
use crate::models::tests::fx;
use crate::models::{ModelEvent, ModelStore, OfferOutcome};
use crate::outbox::SledOutbox;

fn message(hub: &BatchSigner, id: &[u8], kind: downlink::Kind) -> Vec<u8> {
    let body = Downlink {
        schema_version: pleura_shared::SCHEMA_VERSION,
        clinic_id: "clinic-a".into(),
        device_id: "pi-1".into(),
        message_id: id.to_vec(),
        created_at_ms: 1,
        kind: Some(kind),
    }
    .encode_to_vec();
    let signature = hub.sign_in(pleura_shared::signing::Domain::Downlink, &body);
    SignedDownlink { body, signature }.encode_to_vec()
}

#[test]
fn an_offer_is_stored_before_its_receipt_and_a_repeat_is_a_duplicate() {
    let f = fx();
    let outbox = SledOutbox::open(&f.data, 1 << 20).unwrap();
    let (hub, _) = BatchSigner::generate().unwrap();
    let (ack_tx, _acks) = mpsc::channel(8);
    let (clip_tx, _clips) = mpsc::channel(8);
    let (tx, mut rx) = mpsc::channel(8);
    let store = Arc::new(ModelStore::new(
        f.store.layout.clone(),
        Some(f.root.public_key()),
    ));
    let receiver = Receiver::new(
        "clinic-a",
        "pi-1",
        HubTrust::Key(hub.public_key().to_vec()),
        open_stores(&outbox).unwrap(),
        ack_tx,
        clip_tx,
    )
    .with_models(store.clone(), tx);
    let (offer, _) = f.offer(3);
    let m = message(&hub, &[5; 16], downlink::Kind::ModelOffer(offer));
    assert_eq!(
        receiver.handle(&m).unwrap(),
        Outcome::Stored { receipt: [5; 16] }
    );
    // Persisted by the time the receipt may go out.
    assert_eq!(store.pending().unwrap().unwrap().version, 3);
    assert!(matches!(
        rx.try_recv().unwrap(),
        ModelEvent::Offer(OfferOutcome::Accepted(_))
    ));
    assert_eq!(
        receiver.handle(&m).unwrap(),
        Outcome::Duplicate { receipt: [5; 16] }
    );
    assert!(rx.try_recv().is_err(), "a repeat is not acted on");

    let chunk = ModelChunk {
        release_version: 3,
        ..Default::default()
    };
    let c = message(&hub, &[], downlink::Kind::ModelChunk(chunk));
    assert_eq!(receiver.handle(&c).unwrap(), Outcome::Forwarded);
    assert!(matches!(rx.try_recv().unwrap(), ModelEvent::Chunk(_)));

    let cmd = pleura_shared::wire::ModelCommand {
        release_version: 3,
        action: pleura_shared::wire::ModelAction::Abort as i32,
    };
    let m = message(&hub, &[6; 16], downlink::Kind::ModelCommand(cmd));
    assert_eq!(
        receiver.handle(&m).unwrap(),
        Outcome::Stored { receipt: [6; 16] }
    );
    assert!(store.layout.command_file().exists());
    assert!(matches!(rx.try_recv().unwrap(), ModelEvent::Command));
    assert_eq!(
        crate::models::command::take(&store).unwrap(),
        vec![crate::models::command::Decided::Aborted {
            version: 3,
            download: true
        }]
    );
    assert!(store.pending().unwrap().is_none());
}
