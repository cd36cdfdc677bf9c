use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shipper::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        shipper::cli::LogFormat::Json => logs.json().init(),
        shipper::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match shipper::commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shipper: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
