use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = edge_agent::cli::Cli::parse();
    edge_agent::cli::init_tracing(cli.verbose);
    match edge_agent::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
