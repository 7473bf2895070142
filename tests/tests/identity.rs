//! A result is one scan of one patient's lung zone. The outside chaos test exported 45
//! byte-identical scans under 5 patient folders and got 9 cases, all under patient 1.
//! Real agent and hub.

use std::collections::HashSet;
use std::time::Duration;

use pleura_e2e::*;

#[test]
fn byte_identical_scans_under_different_patients_and_zones_stay_separate_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, hub.agent_options()).unwrap();
    agent.start().unwrap();
    let src = repo_root().join("fixtures/scans/pocus_pneu_emdocs1.png");
    let patients = ["P-0001", "P-0002", "P-0003"];
    for p in patients {
        std::fs::create_dir_all(agent.inbox.join(p)).unwrap();
        for zone in ["R1", "L2"] {
            let tmp = agent.inbox.join(p).join(format!(".scan_{zone}.part"));
            std::fs::copy(&src, &tmp).unwrap();
            std::fs::rename(&tmp, agent.inbox.join(p).join(format!("scan_{zone}.png"))).unwrap();
        }
    }
    eventually("six cases at the hub", Duration::from_secs(120), || {
        (hub.case_ids().ok()?.len() >= 6).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let cases = hub.cases().unwrap();
    assert_eq!(cases.len(), 6, "one case per patient and zone, none merged");
    let keys: HashSet<(Vec<u8>, String)> = cases
        .iter()
        .map(|c| {
            let r = c.result.as_ref().unwrap();
            (r.patient_key.clone(), r.zone.clone())
        })
        .collect();
    assert_eq!(keys.len(), 6);
    let patients_seen: HashSet<&Vec<u8>> = keys.iter().map(|(p, _)| p).collect();
    assert_eq!(patients_seen.len(), 3, "three patients");
}
