//! `hub-server model …` and `enroll --data-dir` as an operator runs them, on real files,
//! and a running hub picking up the rollout plan.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

fn hub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hub-server"))
        .args(args)
        .output()
        .expect("run hub-server")
}

fn ok(args: &[&str]) -> String {
    let out = hub(args);
    assert!(
        out.status.success(),
        "hub-server {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = hub(args);
    assert!(
        !out.status.success(),
        "hub-server {} succeeded",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn model_files(dir: &Path) -> (String, String) {
    let bytes = vec![42u8; 50_000];
    let model = dir.join("pleura-lite.onnx");
    std::fs::write(&model, &bytes).unwrap();
    let sidecar = serde_json::json!({
        "name": "pleura-lite", "sha256": hex::encode(Sha256::digest(&bytes)),
        "input": {"size": 2}, "classes": ["covid", "other_pneumonia", "normal"],
    });
    std::fs::write(dir.join("pleura-lite.json"), sidecar.to_string()).unwrap();
    let vectors = dir.join("vectors.json");
    std::fs::write(
        &vectors,
        r#"{"tolerance":0.01,"vectors":[{"frame_hex":"01020304","expected":{"class_probs":[0.1,0.2,0.7]}}]}"#,
    )
    .unwrap();
    (
        model.to_string_lossy().into_owned(),
        vectors.to_string_lossy().into_owned(),
    )
}

#[test]
fn models_cli_publishes_rolls_out_and_enrols_with_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let (model, vectors) = model_files(dir.path());
    let publish = |v: &str| {
        hub(&[
            "model",
            "publish",
            "--data-dir",
            d,
            "--model",
            &model,
            "--version",
            v,
            "--self-test",
            &vectors,
        ])
    };
    assert!(String::from_utf8_lossy(&publish("1").stderr).contains("model init-keys"));
    let out = ok(&["model", "init-keys", "--data-dir", d]);
    assert!(out.contains("OFFLINE"), "{out}");
    assert!(publish("1").status.success());
    assert!(String::from_utf8_lossy(&publish("1").stderr).contains("not above"));
    assert!(ok(&["model", "list", "--data-dir", d]).contains("1\tpleura-lite\t50000 bytes"));

    let e = fails(&[
        "model",
        "rollout",
        "--data-dir",
        d,
        "--version",
        "2",
        "--percent",
        "5",
    ]);
    assert!(e.contains("release 2 is not published"), "{e}");
    let out = ok(&[
        "model",
        "rollout",
        "--data-dir",
        d,
        "--version",
        "1",
        "--clinics",
        "c1,c2",
        "--shadow",
    ]);
    assert!(out.contains("running, clinics c1,c2, shadow"), "{out}");
    let st = ok(&["model", "status", "--data-dir", d]);
    assert!(st.contains("the hub has not applied this plan yet"), "{st}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["model", "status", "--data-dir", d, "--json"])).unwrap();
    assert_eq!(json["releases"]["1"]["plan"]["state"], "running");
    ok(&["model", "pause", "--data-dir", d, "--version", "1"]);
    assert!(fails(&["model", "pause", "--data-dir", d, "--version", "1"]).contains("paused"));
    ok(&["model", "resume", "--data-dir", d, "--version", "1"]);
    // The promotion gate reads the hub's shadow comparison.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let shadow = serde_json::json!({"generated_at_ms": now_ms, "candidates": {"1": {
        "release": 1, "exams_compared": 12, "scans_compared": 20,
        "active": {"sensitivity": {"hits": 5, "of": 5}},
        "candidate": {"sensitivity": {"hits": 4, "of": 5}}}}});
    std::fs::write(data.join("models/shadow.json"), shadow.to_string()).unwrap();
    let st = ok(&["model", "status", "--data-dir", d]);
    assert!(
        st.contains("on 12 reviewed examination(s), 20 scan(s)"),
        "{st}"
    );
    let promote = ["model", "promote", "--data-dir", d, "--version", "1"];
    let gated = [&promote[..], &["--min-reviewed", "50", "--not-worse"]].concat();
    let e = fails(&gated);
    assert!(
        e.contains("12 reviewed examination(s) compared, fewer than the 50 required"),
        "{e}"
    );
    assert!(
        e.contains("candidate sensitivity 80.0% (4/5) is below the active model's 100.0% (5/5)"),
        "{e}"
    );
    let out = ok(&[&gated[..], &["--force"]].concat());
    assert!(out.contains("promoting anyway (--force)"), "{out}");
    assert!(out.contains("promoting on this shadow comparison"), "{out}");
    ok(&["model", "abort", "--data-dir", d, "--version", "1"]);
    let e = fails(&[
        "model",
        "rollout",
        "--data-dir",
        d,
        "--version",
        "1",
        "--percent",
        "5",
    ]);
    assert!(e.contains("aborted"), "{e}");
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("models/rollout.json")).unwrap()).unwrap();
    assert_eq!(plan["releases"]["1"]["state"], "aborted");

    ok(&[
        "model",
        "rotate-signing-key",
        "--data-dir",
        d,
        "--revoke-old",
    ]);
    assert!(data.join("models/roots/2.json").exists());

    let pki = dir.path().join("pki");
    let p = pki.to_str().unwrap();
    ok(&["ca", "init", "--pki-dir", p]);
    let bundle = dir.path().join("bundle");
    let out = ok(&[
        "enroll",
        "--pki-dir",
        p,
        "--clinic",
        "c1",
        "--device",
        "pi-1",
        "--region",
        "north",
        "--out",
        bundle.to_str().unwrap(),
        "--data-dir",
        d,
    ]);
    assert!(out.contains("model-root.pub"), "{out}");
    assert_eq!(
        std::fs::read(bundle.join("model-root.pub")).unwrap(),
        std::fs::read(data.join("models/model-root.pub")).unwrap()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn models_plan_is_applied_by_a_running_hub() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let (model, vectors) = model_files(dir.path());
    ok(&["model", "init-keys", "--data-dir", d]);
    ok(&[
        "model",
        "publish",
        "--data-dir",
        d,
        "--model",
        &model,
        "--version",
        "3",
        "--self-test",
        &vectors,
    ]);
    let cfg = dir.path().join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{d}\"\ngrpc_listen = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
             [security]\nmode = \"insecure-plaintext\"\naccounts_file = \"{}\"\n\
             [mqtt]\nlisten = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port(),
            dir.path().join("accounts.json").display(),
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub-server"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ok(&[
        "model",
        "rollout",
        "--data-dir",
        d,
        "--version",
        "3",
        "--percent",
        "50",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let st = ok(&["model", "status", "--data-dir", d]);
        if st.contains("release 3 (pleura-lite): running, 50% of devices")
            && !st.contains("has not applied")
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(applied, "the hub never wrote the plan into status.json");
}
