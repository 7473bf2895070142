//! The README's first command, run as a new user would (but ending by itself): the whole
//! loop must complete, from offline analysis to the specialist's verdict on the clinic page.

use std::process::Command;

#[test]
fn the_demo_runs_the_whole_review_loop() {
    let out = Command::new(env!("CARGO_BIN_EXE_pleura-demo"))
        .env("PLEURA_DEMO_EXIT", "1")
        .output()
        .expect("running the demo");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "analysed offline",
        "each exactly once",
        "preview at the hub",
        "5. The verdict, signed by the hub, is held by clinic-north",
    ] {
        assert!(said.contains(step), "the demo never said {step:?}:\n{said}");
    }
}
