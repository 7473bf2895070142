//! Nothing that identifies a patient leaves the clinic: a DICOM with synthetic PHI in
//! its header, its folder name and burned into its pixels goes through a real agent
//! and hub; the hub's storage and a capture of the traffic are searched for every
//! PHI string.

use std::time::Duration;

use pleura_e2e::*;

const PHI: &[&str] = &[
    "DOE",
    "JANE",
    "MRN-4471",
    "4471",
    "19470312",
    "1947",
    "Kisumu",
    "Odinga",
    "OKELLO",
    "PHIOPERATOR",
    "ACC-PHI",
    "STUDY-PHI",
    "LUMIFY-PHI",
    "SN-PHI",
    "coughing",
    "PHITEST",
];

fn find_phi(hay: &[u8]) -> Vec<&'static str> {
    PHI.iter()
        .copied()
        .filter(|p| {
            hay.windows(p.len())
                .any(|w| w.eq_ignore_ascii_case(p.as_bytes()))
        })
        .collect()
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn no_phi_reaches_the_hub_storage_or_the_wire() {
    let tmp = tempfile::tempdir().unwrap();
    // Insecure mode on purpose: with TLS the capture would be ciphertext and prove
    // nothing about what the agent sends. Storage is the same in every mode.
    let mut hub = Hub::new_insecure(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let proxy = CountingProxy::start(hub.mqtt_port, true).unwrap();
    let mut agent = Agent::new(&tmp.path().join("a"), proxy.port, AgentOptions::default()).unwrap();
    let src = repo_root().join("fixtures/phi/synthetic_phi.dcm");
    assert_eq!(
        find_phi(&std::fs::read(&src).unwrap()).len(),
        PHI.len(),
        "fixture carries all PHI"
    );
    // The device exports into a folder named after the patient ID, as many do.
    std::fs::create_dir_all(agent.inbox.join("MRN-4471-PHI")).unwrap();
    std::fs::copy(&src, agent.inbox.join("MRN-4471-PHI/DOE_JANE_R2.dcm")).unwrap();
    agent.start().unwrap();
    eventually("the scan at the hub", Duration::from_secs(60), || {
        (hub.case_ids().ok()?.len() == 1).then_some(())
    });
    agent.kill9();
    hub.kill9();

    let wire = proxy.captured();
    assert!(
        wire.len() > 200,
        "traffic was captured ({} bytes)",
        wire.len()
    );
    assert_eq!(find_phi(&wire), Vec::<&str>::new(), "PHI on the wire");
    let mut files = Vec::new();
    files_under(&hub.dir, &mut files);
    assert!(files
        .iter()
        .any(|f| f.to_string_lossy().contains("cases.sled")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(
            find_phi(&bytes),
            Vec::<&str>::new(),
            "PHI in hub file {}",
            f.display()
        );
    }
}
