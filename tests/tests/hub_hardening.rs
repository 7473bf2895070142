//! The hub against its own people and devices: refused calls are all audited but folded
//! under a flood, logins are throttled per account and per source, the audit log is
//! keyed and checkpointed, one device cannot take another's result id, one batch limit
//! holds on gRPC as on MQTT, and the data directory is private.

use std::net::IpAddr;
use std::time::Duration;

use pleura_e2e::*;
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{GetCaseRequest, LoginRequest};
use pleura_shared::record::sample_record;
use pleura_shared::ScanRecord;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A TLS channel to the hub from a chosen loopback source address.
async fn channel_from(hub: &Hub, source: &str) -> anyhow::Result<Channel> {
    let pki = hub.pki.as_ref().expect("a TLS hub");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.join("ca.pem"))?));
    Ok(Endpoint::from_shared(hub.grpc_url())?
        .tls_config(tls)?
        .local_address(Some(source.parse::<IpAddr>()?))
        .connect()
        .await?)
}

fn audit_lines(hub: &Hub) -> Vec<serde_json::Value> {
    std::fs::read_to_string(hub.dir.join("data/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn refused_calls_are_all_audited_folded_under_a_flood_and_logins_are_throttled() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    hub.add_user("ana", "specialist", Some("north"), "north specialist pw")
        .unwrap();
    hub.add_user("bob", "specialist", Some("north"), "another specialist")
        .unwrap();

    block_on(async {
        // 1000 calls with a forged token, from one source.
        let mut c = HubClient::new(hub.channel(None).await?);
        let forged = format!("v1.{}.{}", "00".repeat(40), "11".repeat(32));
        for _ in 0..1000 {
            let e = c
                .get_case(bearer(
                    GetCaseRequest {
                        result_id: vec![1; 16],
                    },
                    &forged,
                ))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        // And one without any token.
        let e = c
            .get_case(GetCaseRequest {
                result_id: vec![1; 16],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);

        // Guessing ana's password from 127.0.0.1: locked after 5 failures, even for the
        // right password; the lock holds from another source too.
        let mut here = HubClient::new(channel_from(&hub, "127.0.0.1").await?);
        let login = |u: &str, p: &str| LoginRequest {
            username: u.into(),
            password: p.into(),
        };
        for i in 0..5 {
            let e = here
                .login(login("ana", &format!("guess number {i}")))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        let e = here
            .login(login("ana", "north specialist pw"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("too many attempts"));
        let mut there = HubClient::new(channel_from(&hub, "127.0.0.2").await?);
        let e = there
            .login(login("ana", "north specialist pw"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // Spraying other names from 127.0.0.1 locks that source ...
        for i in 0..15 {
            let _ = here
                .login(login(&format!("user{i}"), "spray password"))
                .await;
        }
        let e = here
            .login(login("bob", "another specialist"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("source"));
        // ... while another account from another source still logs in.
        there.login(login("bob", "another specialist")).await?;
        Ok(())
    })
    .unwrap();

    // Every refused call is in the log, without the token, counted: folded by source
    // (1000 forged, 1 without a token, 5 wrong passwords, 2 throttled, 15 sprayed).
    let refused = 1000 + 1 + 5 + 1 + 15 + 1;
    let forged_lines = eventually(
        "the flood's counts flushed",
        Duration::from_secs(10),
        || {
            let lines: Vec<serde_json::Value> = audit_lines(&hub)
                .into_iter()
                .filter(|l| {
                    l["source"] == "127.0.0.1"
                        && l["outcome"]
                            .as_str()
                            .is_some_and(|o| o.starts_with("denied"))
                })
                .collect();
            let sum: u64 = lines.iter().map(|l| l["count"].as_u64().unwrap()).sum();
            (sum == refused).then_some(lines)
        },
    );
    println!(
        "{refused} refused calls from one source: {} audit lines",
        forged_lines.len()
    );
    assert!(forged_lines.len() <= 40, "{} lines", forged_lines.len());
    let all = audit_lines(&hub);
    let text = std::fs::read_to_string(hub.dir.join("data/audit.log")).unwrap();
    assert!(!text.contains(&"11".repeat(32)), "a token reached the log");
    let has = |user: &str, outcome: &str, source: &str| {
        all.iter().any(|l| {
            l["user"] == user
                && l["outcome"].as_str().is_some_and(|o| o.contains(outcome))
                && l["source"] == source
        })
    };
    // The first refusal from a source is written as it happened; the folded lines name
    // the reasons.
    assert!(has("-", "signature is wrong", "127.0.0.1"));
    assert!(has("-", "too many attempts", "127.0.0.1"));
    assert!(has(
        "ana",
        "too many attempts for this account",
        "127.0.0.2"
    ));
    assert!(has("bob", "allowed", "127.0.0.2"));
    assert!(hub.metric("pleura_hub_logins_throttled_total").unwrap() >= 3);
    assert_eq!(
        hub.metric("pleura_hub_denied_calls_total"),
        Some(refused + 1)
    );

    // The log verifies with the key, and the checkpoint matches /metrics.
    let data = hub.dir.join("data");
    let out = hub_admin(&["audit", "verify", &data.to_string_lossy()], None).unwrap();
    assert!(out.contains("chain intact"), "{out}");
    let cp = hub_admin(&["audit", "checkpoint", &data.to_string_lossy()], None).unwrap();
    let seq = hub.metric("pleura_hub_audit_seq").unwrap();
    assert!(cp.starts_with(&format!("seq={seq} ")), "{cp} vs {seq}");
    assert_eq!(seq, all.len() as u64);
}

#[test]
fn a_thousand_user_names_from_one_source_make_a_few_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let before = audit_lines(&hub).len();
    block_on(async {
        let mut c = HubClient::new(channel_from(&hub, "127.0.0.3").await?);
        for i in 0..1000 {
            let e = c
                .login(LoginRequest {
                    username: format!("nobody{i}"),
                    password: "spray password".into(),
                })
                .await
                .unwrap_err();
            assert!(
                matches!(
                    e.code(),
                    tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
                ),
                "{e:?}"
            );
        }
        Ok(())
    })
    .unwrap();
    let lines = eventually("the spray flushed", Duration::from_secs(10), || {
        let lines: Vec<serde_json::Value> = audit_lines(&hub)
            .into_iter()
            .filter(|l| l["source"] == "127.0.0.3")
            .collect();
        let sum: u64 = lines.iter().map(|l| l["count"].as_u64().unwrap()).sum();
        (sum == 1000).then_some(lines)
    });
    println!(
        "1000 refused logins, 1000 user names, one source: {} audit lines",
        lines.len()
    );
    assert!(lines.len() <= 8, "{} lines", lines.len());
    let text = std::fs::read_to_string(hub.dir.join("data/audit.log")).unwrap();
    assert!(!text.contains("nobody999"), "folded names reached the log");
    assert!(audit_lines(&hub).len() - before <= 8);
}

#[test]
fn removing_the_log_and_its_checkpoint_stops_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    hub.case_ids().unwrap();
    hub.kill9();
    let data = hub.dir.join("data");
    let d = data.to_string_lossy().into_owned();
    std::fs::remove_file(data.join("audit.log")).unwrap();
    std::fs::remove_file(data.join("audit.checkpoint")).unwrap();
    let e = hub_admin(&["audit", "verify", &d], None).unwrap_err();
    assert!(e.to_string().contains("checkpoint missing"), "{e}");
    let out = std::process::Command::new(bin("hub-server"))
        .args(["serve", "--config"])
        .arg(hub.dir.join("hub.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("checkpoint missing"), "{err}");
    assert!(
        !data.join("audit.log").exists(),
        "a fresh chain was started"
    );
}

#[test]
fn the_audit_log_needs_its_key_and_a_cut_log_stops_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    for _ in 0..3 {
        hub.case_ids().unwrap();
    }
    hub.kill9();
    let data = hub.dir.join("data");
    let log = data.join("audit.log");
    let d = data.to_string_lossy().into_owned();
    assert!(hub_admin(&["audit", "verify", &d], None)
        .unwrap()
        .contains("chain intact"));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6);

    // Without the key there is nothing to verify against.
    let e = hub_admin(
        &["audit", "verify", &d, "--key", "/nonexistent/audit.key"],
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("audit key"), "{e}");
    // The last line edited, the tail cut, the file emptied: each named.
    let cases = [
        (text.replacen("\"allowed\"", "\"denied: x\"", 1), "bad MAC"),
        (
            format!("{}\n", lines[..lines.len() - 5].join("\n")),
            "truncated",
        ),
        (String::new(), "empty file"),
    ];
    for (tampered, what) in cases {
        std::fs::write(&log, tampered).unwrap();
        let e = hub_admin(&["audit", "verify", &d], None).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    // A hub does not start on (and so re-checkpoint over) a cut log.
    std::fs::write(&log, format!("{}\n", lines[0])).unwrap();
    let out = std::process::Command::new(bin("hub-server"))
        .args(["serve", "--config"])
        .arg(hub.dir.join("hub.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn a_device_cannot_take_another_devices_result_id_and_one_batch_limit_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let a = hub.enroll("clinic-a", "a", "north").unwrap().unwrap();
    let b = hub.enroll("clinic-b", "b", "north").unwrap().unwrap();
    block_on(async {
        let genuine = sample_record("clinic-b", "b", 3, true);
        let mut squat = sample_record("clinic-a", "a", 0, false);
        squat.id = genuine.id;
        squat.scan = squat.id;
        let mut ca = HubClient::new(hub.channel(Some(&a)).await?);
        let mut cb = HubClient::new(hub.channel(Some(&b)).await?);
        ca.upload(signed("clinic-a", "a", &[squat], &a)).await?;
        let ack = cb
            .upload(signed("clinic-b", "b", std::slice::from_ref(&genuine), &b))
            .await?
            .into_inner();
        assert!(ack.committed.is_empty(), "b's result acked as a duplicate");
        assert_eq!(ack.rejected.len(), 1);
        assert!(ack.rejected[0].reason.contains("conflict"));

        // 1,500 results (~285 kB): refused over gRPC as over MQTT; so is a batch just
        // past the byte limit, and that one is counted.
        let recs = |n: usize| -> Vec<ScanRecord> {
            (0..n)
                .map(|_| sample_record("clinic-a", "a", 1, false))
                .collect()
        };
        // tonic refuses what is past the transport bound before decoding it (OUT_OF_RANGE).
        let e = ca
            .upload(signed("clinic-a", "a", &recs(1500), &a))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
        assert!(e.message().contains("too large"), "{e:?}");
        let e = ca
            .upload(signed("clinic-a", "a", &recs(500), &a))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("exceeds the limit"), "{e:?}");
        ca.upload(signed("clinic-a", "a", &recs(50), &a)).await?;
        Ok(())
    })
    .unwrap();
    assert_eq!(hub.metric("pleura_hub_results_conflict_total"), Some(1));
    let too_large = hub
        .metric("pleura_hub_rejected_messages_total{reason=\"too_large\"}")
        .unwrap();
    assert_eq!(too_large, 1);
    assert_eq!(hub.case_ids().unwrap().len(), 51);
}

#[test]
fn the_hub_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    // What an older hub left behind: a world-readable directory and log.
    let data = hub.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("leftover.json"), "{}").unwrap();
    std::fs::set_permissions(
        data.join("leftover.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    hub.start().unwrap();
    let bundle = hub.enroll("clinic-a", "a", "north").unwrap().unwrap();
    block_on(async {
        let mut c = HubClient::new(hub.channel(Some(&bundle)).await?);
        c.upload(signed(
            "clinic-a",
            "a",
            &[sample_record("clinic-a", "a", 2, true)],
            &bundle,
        ))
        .await?;
        Ok(())
    })
    .unwrap();
    hub.case_ids().unwrap();
    hub.kill9();
    let exposed = hub_server::perms::exposed(&data).unwrap();
    assert!(exposed.is_empty(), "readable by group/other: {exposed:?}");
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in [
        "audit.log",
        "audit.key",
        "audit.checkpoint",
        "token.key",
        "cases.sled",
    ] {
        assert!(names.iter().any(|n| n == f), "{f} missing from {names:?}");
    }
}
