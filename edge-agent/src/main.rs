use clap::Parser;

fn main() -> std::process::ExitCode {
    // Case data, keys and the outbox are the agent's alone: nothing this process
    // creates is readable by group or others, whatever the caller's umask.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let cli = edge_agent::cli::Cli::parse();
    // The daemon logs at info by default (RUST_LOG overrides); one-shot commands warn.
    let daemon = matches!(cli.command, edge_agent::cli::Command::Run { .. });
    edge_agent::cli::init_tracing(cli.verbose, daemon);
    match edge_agent::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A lost pseudonym key is a configuration error, like a bad config file.
            if e.downcast_ref::<edge_agent::daemon::MissingKey>().is_some() {
                return std::process::ExitCode::from(64);
            }
            std::process::ExitCode::from(1)
        }
    }
}
