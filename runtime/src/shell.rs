//! The small shell every binary shares: logging to stderr, the shutdown signal, a
//! runtime for long-running commands and the exit codes.
//!
//! Exit codes: 0 success, 1 failure, 64 (`EX_USAGE`) when the configuration is at fault
//! (a file that does not load, a missing key): the supervisor should not restart
//! the process until a person fixes it.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Exit status for a configuration a person must fix (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// An error a person must fix in the configuration; [`exit`] maps it to `EXIT_CONFIG`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Misconfigured(pub String);

impl Misconfigured {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// Logs to stderr, filtered by `RUST_LOG` or else by `default` (an `EnvFilter` string).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The filter for `-v` counts: `default` without one, then debug, then trace.
pub fn verbosity(verbose: u8, default: &'static str) -> &'static str {
    match verbose {
        0 => default,
        1 => "debug",
        _ => "trace",
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is
/// called, not when it is first polled, so a signal right after cannot be missed.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    async move {
        match handlers {
            Ok((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no signal handlers: stop with SIGKILL");
                std::future::pending().await
            }
        }
    }
}

/// A token cancelled on SIGTERM or Ctrl-C. Call inside a runtime.
pub fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let signalled = shutdown_signal();
    tokio::spawn(async move {
        signalled.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// Runs a long-running command on a multi-threaded runtime until it ends or a
/// shutdown signal cancels its token.
pub fn serve<F, Fut>(run: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    rt.block_on(async { run(cancel_on_signal()).await })
}

/// The process's exit status for a command's result; errors are printed with their
/// whole chain of context.
pub fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| c.is::<Misconfigured>()) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Only this process's user may read what it creates, whatever the caller's umask.
pub fn private_files() {
    // SAFETY: umask only sets the process's file-creation mask; it has no preconditions.
    unsafe { libc::umask(0o077) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misconfiguration_anywhere_in_the_chain_exits_64_and_others_1() {
        let bad = anyhow::Error::new(Misconfigured::new("no such key file")).context("starting");
        assert_eq!(exit(Err(bad)), ExitCode::from(EXIT_CONFIG));
        assert_eq!(
            exit(Err(anyhow::anyhow!("disk on fire"))),
            ExitCode::FAILURE
        );
        assert_eq!(exit(Ok(ExitCode::from(3))), ExitCode::from(3));
    }

    #[test]
    fn serve_cancels_its_token_on_sigterm() {
        let r = serve(|token| async move {
            // SAFETY: raising a signal at our own process; its handler is installed.
            unsafe { libc::raise(libc::SIGTERM) };
            tokio::time::timeout(std::time::Duration::from_secs(10), token.cancelled())
                .await
                .map_err(|_| anyhow::anyhow!("SIGTERM did not cancel the token"))
        });
        r.unwrap();
    }
}
