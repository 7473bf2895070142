use std::process::ExitCode;

use clap::Parser;
use hub_server::cli::{self, Command};
use pleura_runtime::shell;

#[derive(Parser)]
#[command(name = "hub-server", version, about = "Pleura regional hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shell::init_tracing(cli::LOG_DEFAULT);
    shell::exit(cli::run(cli.command))
}
