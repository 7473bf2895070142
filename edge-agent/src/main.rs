use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pleura_runtime::shell;

#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "Pleura clinic agent: lung-ultrasound triage support (not a diagnosis)"
)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The research tools first (`analyze`, `eval`, `bench`), then the clinic's commands.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Lab(pleura_lab::Command),
    #[command(flatten)]
    Clinic(edge_agent::cli::Command),
}

fn main() -> ExitCode {
    // Case data, keys and the outbox are the agent's alone, whatever the caller's umask.
    shell::private_files();
    let cli = Cli::parse();
    let log_default = match &cli.command {
        Command::Lab(_) => "warn",
        Command::Clinic(c) => c.log_default(),
    };
    shell::init_tracing(shell::verbosity(cli.verbose, log_default));
    shell::exit(match cli.command {
        Command::Lab(c) => pleura_lab::run(c),
        Command::Clinic(c) => edge_agent::cli::run(c),
    })
}
