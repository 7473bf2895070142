use std::process::ExitCode;

use pleura_runtime::shell;

fn main() -> ExitCode {
    shell::init_tracing(pleura_demo::LOG_DEFAULT);
    shell::exit(pleura_demo::run().map(|()| ExitCode::SUCCESS))
}
