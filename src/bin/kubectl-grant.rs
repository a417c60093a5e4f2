//! `kubectl-grant`: the kubectl plugin (`kubectl grant …`). Parsing and the
//! exit code only; the commands live in `upload_grant_operator::plugin`.

use clap::Parser;
use upload_grant_operator::plugin::{self, Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = plugin::run(cli).await;
    if let Err(e) = &result {
        eprintln!("error: {e}");
    }
    std::process::ExitCode::from(plugin::exit_code(&result))
}
