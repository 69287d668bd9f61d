//! The `registry` binary: parses the command line (`args`) and runs a command (`commands`,
//! `wizard`).

mod args;
mod cert;
mod client;
mod commands;
mod config;
mod install;
mod instance;
mod manage;
mod wizard;

use clap::Parser;

use args::{Cli, Command};
use commands::{admin, remote, run, serve, storage, token};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let home = instance::config_home(cli.config_dir);
    let result = match cli.command {
        Command::Serve(args) => serve::run_serve(&home, args),
        Command::Config(args) => admin::config(&home, &args),
        Command::Instance(c) => admin::instance(&home, c),
        Command::User(c) => admin::user(&home, c),
        Command::Reconfigure(args) => admin::reconfigure(&home, args),
        Command::Cert(c) => admin::cert(&home, c),
        Command::Token(c) => token::token(&home, c),
        Command::Check => admin::check(&home),
        Command::Install(args) => admin::install(&home, args),
        Command::Uninstall(args) => admin::uninstall(&home, args),
        Command::Login(args) => run(remote::login(&home, args)),
        Command::ListTags(args) => run(remote::list_tags(args)),
        Command::DeleteTags(args) => remote::delete_tags(&home, args),
        Command::Gc(args) => storage::gc(&home, args),
        Command::Fsck(args) => storage::fsck(&home, args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
