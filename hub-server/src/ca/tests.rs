use super::*;

#[test]
fn enrol_revoke_and_reenrol_are_seen_by_a_running_registry() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), "test", &["127.0.0.1".into()]).unwrap();
    assert!(Pki::init(dir.path(), "again", &[]).is_err(), "no overwrite");
    let reg = Registry::new(dir.path()).unwrap();
    let now = now_s();
    let bundle = dir.path().join("bundle");
    let rec = pki
        .enroll("c1", "d1", "north", now - 60, now + 86_400, &bundle)
        .unwrap();
    for f in ["ca.pem", "device.pem", "device.key"] {
        assert!(bundle.join(f).exists(), "{f}");
    }
    let der = pleura_shared::pki::load_certs(&bundle.join("device.pem")).unwrap();
    let info = cert_info(&der[0]).unwrap();
    assert_eq!(info.principal, Principal::device("c1", "d1"));
    assert_eq!(info.serial, rec.serial);
    assert!(reg.trusted("c1", "d1", Some(&rec.serial)).is_ok());
    assert!(matches!(
        reg.trusted("c1", "d2", None),
        Err(TrustError::Unknown(_))
    ));
    assert!(
        pki.enroll("c1", "d2", "south", now, now + 60, &bundle)
            .is_err(),
        "a clinic lives in one region"
    );
    // mtime granularity: make sure the rewrite is visible as a change.
    std::thread::sleep(std::time::Duration::from_millis(20));
    pki.revoke("c1", "d1").unwrap();
    assert!(matches!(
        reg.trusted("c1", "d1", Some(&rec.serial)),
        Err(TrustError::Revoked(_))
    ));
    assert!(read(&pki.crl()).unwrap().contains("X509 CRL"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = pki
        .enroll("c1", "d1", "north", now - 60, now + 86_400, &bundle)
        .unwrap();
    assert!(matches!(
        reg.trusted("c1", "d1", Some(&rec.serial)),
        Err(TrustError::Superseded(..))
    ));
    assert!(reg.trusted("c1", "d1", Some(&again.serial)).is_ok());
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    pleura_shared::pki::load_certs(path).unwrap()
}

/// Whether `leaf` chains to `root` (rustls' client-certificate check).
fn chains(leaf: &CertificateDer<'_>, root: &CertificateDer<'static>) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.into(),
        pleura_shared::pki::provider(),
    )
    .build()
    .unwrap()
    .verify_client_cert(leaf, &[], rustls::pki_types::UnixTime::now())
    .is_ok()
}

fn public_key_len(der: &CertificateDer<'_>) -> usize {
    pleura_shared::pki::subject_public_key(der).unwrap().len()
}

#[test]
fn a_new_ca_and_hub_certificate_are_p256_and_device_keys_ed25519() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), "t", &["hub.example".into(), "10.0.0.1".into()]).unwrap();
    let ca = certs(&pki.ca_cert());
    assert_eq!(ca.len(), 1);
    assert_eq!(public_key_len(&ca[0]), 65, "uncompressed P-256 point");
    let hub = certs(&pki.hub_cert());
    assert_eq!(public_key_len(&hub[0]), 65);
    assert_eq!(
        pleura_shared::pki::subject_alt_names(&hub[0]).unwrap(),
        ["hub.example", "10.0.0.1"]
    );
    let now = now_s();
    let out = dir.path().join("b");
    pki.enroll("c1", "d1", "north", now - 60, now + 600, &out)
        .unwrap();
    let dev = certs(&out.join("device.pem"));
    assert_eq!(public_key_len(&dev[0]), 32, "Ed25519 device key");
    assert!(chains(&dev[0], &ca[0]));
    assert!(
        Pki::migrate(dir.path()).is_err(),
        "a P-256 CA has nothing to migrate"
    );
}

#[test]
fn migrate_keeps_old_devices_valid_and_moves_the_hub_and_new_enrolments_to_p256() {
    let dir = tempfile::tempdir().unwrap();
    let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
    let pki = Pki::init_legacy_ed25519(dir.path(), "t", &sans).unwrap();
    let old_ca = certs(&pki.ca_cert()).remove(0);
    assert_eq!(public_key_len(&old_ca), 32);
    let now = now_s();
    let (b1, b2) = (dir.path().join("b1"), dir.path().join("b2"));
    let old = pki
        .enroll("c1", "d1", "north", now - 60, now + 600, &b1)
        .unwrap();

    assert_eq!(Pki::migrate(dir.path()).unwrap(), sans);
    assert_eq!(
        certs(&dir.path().join("pre-migrate/ca.pem")),
        std::slice::from_ref(&old_ca)
    );
    assert!(Pki::migrate(dir.path()).is_err(), "only once");
    let bundle = certs(&pki.ca_cert());
    assert_eq!(bundle.len(), 2, "new CA, then the retired one");
    assert_eq!(public_key_len(&bundle[0]), 65);
    assert_eq!(bundle[1], old_ca);
    let hub = certs(&pki.hub_cert());
    assert_eq!(public_key_len(&hub[0]), 65);
    assert_eq!(
        pleura_shared::pki::subject_alt_names(&hub[0]).unwrap(),
        sans
    );
    assert!(chains(&hub[0], &bundle[0]), "hub.pem chains to the new CA");

    // The old device's certificate still chains (to the retired CA) and is trusted.
    let d1 = certs(&b1.join("device.pem")).remove(0);
    assert!(chains(&d1, &old_ca));
    let reg = Registry::new(dir.path()).unwrap();
    assert!(reg.trusted("c1", "d1", Some(&old.serial)).is_ok());
    // New enrolments are signed by the P-256 CA and get the whole bundle.
    pki.enroll("c1", "d2", "north", now - 60, now + 600, &b2)
        .unwrap();
    let d2 = certs(&b2.join("device.pem")).remove(0);
    assert!(chains(&d2, &bundle[0]) && !chains(&d2, &old_ca));
    assert_eq!(certs(&b2.join("ca.pem")), bundle);
    // Revocation still works, with one CRL per CA.
    pki.revoke("c1", "d1").unwrap();
    assert_eq!(
        read(&pki.crl()).unwrap().matches("BEGIN X509 CRL").count(),
        2
    );
}
