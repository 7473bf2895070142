//! `pleura-lab`: the research tools on their own (`edge-agent` carries the same commands).

use std::process::ExitCode;

use clap::Parser;
use pleura_runtime::shell;

#[derive(Debug, Parser)]
#[command(
    name = "pleura-lab",
    version,
    about = "Pleura research tools: analyse, evaluate, benchmark (not a diagnosis)"
)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: pleura_lab::Command,
}

fn main() -> ExitCode {
    shell::private_files();
    let cli = Cli::parse();
    shell::init_tracing(shell::verbosity(cli.verbose, "warn"));
    shell::exit(pleura_lab::run(cli.command))
}
