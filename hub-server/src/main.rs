use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hub_server::config::HubConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "hub-server", version, about = "Pleura regional hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a commented default configuration.
    PrintConfig,
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
        Command::Serve { config } => {
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
