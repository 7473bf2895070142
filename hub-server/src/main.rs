use std::process::ExitCode;

use clap::Parser;
use hub_server::cli::{admin, Command};
use hub_server::config::HubConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "hub-server", version, about = "Pleura regional hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::PrintConfig => {
            print!("{}", HubConfig::example());
            ExitCode::SUCCESS
        }
        cmd @ (Command::Ca(_)
        | Command::Enroll { .. }
        | Command::Revoke { .. }
        | Command::Devices { .. }
        | Command::User(_)
        | Command::Audit(_)) => match admin(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => {
            // Everything the hub writes (store, audit log, keys) is for its user only.
            // Only for `serve`: `ca init`/`enroll` write certificates others must read.
            // SAFETY: umask has no preconditions; no other thread runs yet.
            unsafe {
                libc::umask(0o077);
            }
            let cfg = match HubConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(64);
                }
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let shutdown = CancellationToken::new();
            let result = rt.block_on(async {
                let sd = shutdown.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("shutdown requested");
                    sd.cancel();
                });
                hub_server::run(cfg, shutdown).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
