//! Keys, envelopes and trust state on disk.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn key_files_round_trip_are_private_and_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (root, signer) = (
        RootKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let (rp, sp) = (
        dir.path().join("root.key"),
        dir.path().join("keys/signing.key"),
    );
    root.save(&rp).unwrap();
    signer.save(&sp).unwrap();
    assert_eq!((mode(&rp), mode(&sp)), (0o600, 0o600));
    let root2 = RootKey::load(&rp).unwrap();
    assert_eq!(root2.public_key(), root.public_key());
    assert_eq!(SigningKey::load(&sp).unwrap().key_id(), signer.key_id());
    let e = SigningKey::generate().unwrap().save(&sp).unwrap_err();
    assert!(matches!(e, ReleaseError::KeyFile { .. }), "{e}");
    assert_eq!(SigningKey::load(&sp).unwrap().key_id(), signer.key_id());
    // A loaded key signs what the original's root certifies.
    let mut meta = RootMetadata::first(&root2, NOW);
    meta.add_signing_key(&signer.public_key(), NOW + DAY);
    let mut state = TrustState::new(root.public_key());
    state.update_root(&root2.certify(&meta).unwrap()).unwrap();
    let loaded = SigningKey::load(&sp).unwrap();
    let release = loaded.sign_release(&manifest(1, &model_bytes())).unwrap();
    state.verify_release(&release, Some(NOW), AGENT).unwrap();

    // The same key as PEM `PRIVATE KEY` loads too.
    let der = std::fs::read(&rp).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64(&der)
    );
    std::fs::write(dir.path().join("root.pem"), pem).unwrap();
    let from_pem = RootKey::load(&dir.path().join("root.pem")).unwrap();
    assert_eq!(from_pem.public_key(), root.public_key());

    std::fs::write(dir.path().join("junk.key"), b"not a key").unwrap();
    let e = RootKey::load(&dir.path().join("junk.key")).unwrap_err();
    assert!(matches!(e, ReleaseError::KeyFile { .. }), "{e}");
    assert!(RootKey::load(&dir.path().join("missing.key")).is_err());
    assert_eq!(key_id(&root.public_key()), root.key_id());
}

#[test]
fn the_root_public_key_file_is_one_hex_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = RootKey::generate().unwrap();
    let text = root.public_key_file();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    let p = dir.path().join(ROOT_PUBLIC_KEY_FILE);
    std::fs::write(&p, &text).unwrap();
    assert_eq!(load_root_public_key(&p).unwrap(), root.public_key());
    for bad in [
        "",
        "abcd",
        &text.to_uppercase(),
        &format!("{}00", text.trim()),
    ] {
        assert!(parse_root_public_key(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn envelopes_round_trip_and_refuse_other_spellings() {
    let f = fx();
    let dir = tempfile::tempdir().unwrap();
    let signed = f.signer.sign_release(&manifest(5, &model_bytes())).unwrap();
    let path = dir.path().join(RELEASE_FILE);
    signed.write(&path).unwrap();
    let back = SignedRelease::read(&path).unwrap();
    assert_eq!(back, signed);
    f.state.verify_release(&back, Some(NOW), AGENT).unwrap();

    let root = f.root.certify(&f.meta).unwrap();
    let rpath = dir.path().join(ROOT_FILE);
    root.write(&rpath).unwrap();
    assert_eq!(SignedRoot::read(&rpath).unwrap(), root);

    let json = String::from_utf8(signed.to_json().unwrap()).unwrap();
    let sig = hex::encode(&signed.signature);
    let upper = json.replace(&sig, &sig.to_uppercase());
    assert!(SignedRelease::from_json(upper.as_bytes()).is_err());
    let extra = json.replacen('{', r#"{"note":"x","#, 1);
    assert!(SignedRelease::from_json(extra.as_bytes()).is_err());
    let e = SignedRelease::read(&dir.path().join("missing.json")).unwrap_err();
    assert!(matches!(e, ReleaseError::Io { .. }), "{e}");
    std::fs::write(&path, b"{").unwrap();
    let e = SignedRelease::read(&path).unwrap_err();
    assert!(e.to_string().contains(RELEASE_FILE), "{e}");
}

#[test]
fn trust_state_persists_and_is_rechecked_on_load() {
    let mut f = fx();
    let model = model_bytes();
    let v = f
        .state
        .verify_release(
            &f.signer.sign_release(&manifest(5, &model)).unwrap(),
            None,
            AGENT,
        )
        .unwrap();
    f.state.record_installed(&v).unwrap();
    let gone = SigningKey::generate().unwrap();
    let mut v2 = f.meta.next(NOW);
    v2.add_signing_key(&gone.public_key(), NOW);
    v2.revoke(&gone.key_id());
    f.state.update_root(&f.root.certify(&v2).unwrap()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(TRUST_FILE);
    f.state.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let back = TrustState::load(&path).unwrap();
    assert_eq!(back, f.state);
    assert_eq!(back.installed_version(), Some(5));
    assert_eq!(
        back.revoked_key_ids().collect::<Vec<_>>(),
        [gone.key_id().as_str()]
    );
    let fresh = TrustState::new(f.root.public_key());
    assert_eq!(
        TrustState::from_json(&fresh.to_json().unwrap()).unwrap(),
        fresh
    );

    // A root document in the file that its root key did not sign is refused.
    let text = std::fs::read_to_string(&path).unwrap();
    let other = RootKey::generate().unwrap();
    let forged = text.replace(
        &hex::encode(f.root.public_key()),
        &hex::encode(other.public_key()),
    );
    assert!(TrustState::from_json(forged.as_bytes()).is_err());
}
