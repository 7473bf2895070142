//! The hub binary's edges: bad configuration is refused with exit code 64 and a message
//! naming the problem, before any socket is bound.

use std::process::Command;

fn hub(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hub-server"))
        .args(args)
        .output()
        .expect("run hub-server")
}

#[test]
fn printed_config_is_the_documented_default() {
    let out = hub(&["print-config"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[mqtt]") && text.contains("broker = \"embedded\""));
}

#[test]
fn bad_configs_exit_64_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = hub(&["serve", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));

    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, "data_dir = \"x\"\n[mqtt]\nbroker = \"external\"\n").unwrap();
    let out = hub(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.url"));

    std::fs::write(&cfg, "data_dir = \"x\"\ntypo_field = 1\n").unwrap();
    let out = hub(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo_field"));
}
