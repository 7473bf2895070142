//! The research tools live in `pleura-lab`: the `edge-agent` binary dispatches its
//! `analyze`, `eval` and `bench` there (the lab's own tests cover what they compute),
//! and the clinic library never uses the lab.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::CommandFactory;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("running edge-agent")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn only_the_binary_uses_the_lab() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "{files:?}");
    let binary = [src.join("main.rs")];
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| !binary.contains(f) && !f.starts_with(src.join("bin")))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("pleura_lab"))
        .collect();
    assert!(
        offenders.is_empty(),
        "the clinic library must not use pleura_lab: {offenders:?}"
    );
}

/// Stands in for any binary that flattens the lab's commands.
#[derive(clap::Parser)]
struct Lab {
    #[command(subcommand)]
    command: pleura_lab::Command,
}

#[test]
fn analyze_eval_and_bench_take_every_lab_option() {
    let lab = Lab::command();
    for sub in ["analyze", "eval", "bench"] {
        let out = agent(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        let cmd = lab.find_subcommand(sub).unwrap();
        for arg in cmd.get_arguments() {
            let name = match arg.get_long() {
                Some(l) => format!("--{l}"),
                None => format!("<{}>", arg.get_id().as_str().to_uppercase()),
            };
            assert!(
                help.contains(&name),
                "edge-agent {sub} lacks {name}:\n{help}"
            );
        }
    }
}

#[test]
fn analyze_dispatches_with_the_lab_exit_codes() {
    let out = agent(&["analyze", "--json", "fixtures/scans/cb_frame.bmp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["class_probs"].is_object(), "{v}");
    assert!(v["file"].as_str().unwrap().ends_with("cb_frame.bmp"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "patient notes").unwrap();
    let out = agent(&["analyze", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "a scan failed");

    let out = agent(&[
        "analyze",
        "--model",
        "/nonexistent/model.onnx",
        "fixtures/scans/cb_frame.bmp",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: loading model /nonexistent/model.onnx"),
        "{err}"
    );
}
