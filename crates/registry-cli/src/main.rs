//! The `registry` binary: parses the command line (`args`) and runs a command (`commands`,
//! `wizard`).
#![forbid(unsafe_code)]

mod args;
mod cert;
mod client;
mod commands;
mod config;
mod install;
mod instance;
mod manage;
mod wizard;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serve::AuditFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use args::{Cli, Command};
use commands::{admin, remote, run, serve, storage, token};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let audit = match &cli.command {
        Command::Serve(a) => (a.audit_log.clone(), a.audit_format),
        _ => (None, None),
    };
    if let Err(e) = init_logs(audit.0, audit.1) {
        eprintln!("registry: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
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

/// The log on stderr (`RUST_LOG`, default `info`) and the audit trail (target `audit`, see
/// `registry_http::audit`): in the log unless a file (or `-`, stderr) or JSON is asked for,
/// then apart from it, whatever `RUST_LOG` says.
fn init_logs(audit_log: Option<PathBuf>, format: Option<AuditFormat>) -> anyhow::Result<()> {
    use tracing_subscriber::{filter, fmt, EnvFilter};
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if audit_log.is_none() && format.is_none() {
        tracing_subscriber::registry()
            .with(log.with_filter(env))
            .init();
        return Ok(());
    }
    let writer: Box<dyn std::io::Write + Send> = match audit_log.as_deref() {
        None => Box::new(std::io::stderr()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stderr()),
        Some(p) => {
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            Box::new(
                options
                    .open(p)
                    .with_context(|| format!("cannot open the audit log {}", p.display()))?,
            )
        }
    };
    let writer = std::sync::Mutex::new(writer);
    let only_audit =
        filter::Targets::new().with_target(registry_http::audit::TARGET, tracing::Level::INFO);
    let audit = match format.unwrap_or(AuditFormat::Text) {
        AuditFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .with_filter(only_audit)
            .boxed(),
        AuditFormat::Text => fmt::layer()
            .with_ansi(false)
            .with_writer(writer)
            .with_filter(only_audit)
            .boxed(),
    };
    let not_audit = filter::filter_fn(|m| m.target() != registry_http::audit::TARGET);
    tracing_subscriber::registry()
        .with(log.with_filter(env).with_filter(not_audit))
        .with(audit)
        .init();
    Ok(())
}
