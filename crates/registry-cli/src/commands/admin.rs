//! The commands that manage instances on this machine: `instance`, `user`, `cert`,
//! `reconfigure`, `config` (the wizard), `check`, `install` and `uninstall`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::{install, instance, manage, wizard};

#[derive(Subcommand)]
pub(crate) enum InstanceCommand {
    /// Create an instance (a directory with registry.toml under the config home).
    Create {
        name: String,
        /// The host name clients use (told apart from other instances on one address by it).
        #[arg(long)]
        hostname: Option<String>,
        /// Address to listen on [default: 127.0.0.1:5000].
        #[arg(long)]
        listen: Option<String>,
        /// A directory or s3://bucket/prefix [default: data/ in the instance directory].
        #[arg(long)]
        storage: Option<String>,
        /// Refuse `instance remove` and `uninstall` without --force.
        #[arg(long)]
        protected: bool,
    },
    /// One line per instance: name, address, host name, storage.
    List,
    /// What an instance serves.
    Show { name: String },
    /// Remove an instance's configuration, users and certificates (never its stored images).
    Remove {
        name: String,
        /// Remove even a protected instance.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum CertCommand {
    /// Create the instance's CA (tls/ca.pem, tls/ca-key.pem with mode 0600).
    InitCa {
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
        /// The CA's common name [default: "<instance> registry CA"].
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (certificates it signed stop being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Sign a server certificate for these host names / IP addresses and serve TLS with it.
    Server {
        #[arg(required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Sign a client certificate and write ca.crt, client.cert, client.key (0600) into --out.
    Client {
        name: String,
        /// A directory, e.g. /etc/docker/certs.d/<host> or ~/.config/containers/certs.d/<host>.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub(crate) fn reconfigure_help() -> String {
    format!("Keys:\n{}", manage::reconfigure_keys())
}

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user; the password is generated and printed once, or read with --password-stdin.
    Add(UserArgs),
    /// Change a user's password (generated, or read with --password-stdin).
    Passwd(UserArgs),
    /// Remove a user.
    Remove {
        user: String,
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
    },
    /// List an instance's users.
    List {
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
    },
}

#[derive(Args)]
pub(crate) struct UserArgs {
    pub user: String,
    /// The instance [default: default].
    #[arg(long, default_value = instance::DEFAULT)]
    pub instance: String,
    /// Read the password from the first line of stdin instead of generating one.
    #[arg(long)]
    pub password_stdin: bool,
}

/// The arguments of `registry reconfigure`.
#[derive(Args)]
pub(crate) struct ReconfigureArgs {
    /// KEY=VALUE settings.
    #[arg(value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    #[arg(long, default_value = instance::DEFAULT)]
    pub instance: String,
    /// Then have the running `registry serve` apply it (SIGHUP).
    #[arg(long)]
    pub reload: bool,
}

/// The arguments of `registry install`.
#[derive(Args)]
pub(crate) struct InstallArgs {
    /// Print what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// The system user the service runs as (created when missing).
    #[arg(long, default_value = install::SERVICE)]
    pub user: String,
    /// Where to write the unit; other than /etc/systemd/system only the file is written.
    #[arg(long, default_value = install::SYSTEMD_DIR)]
    pub unit_dir: PathBuf,
}

/// The arguments of `registry uninstall`.
#[derive(Args)]
pub(crate) struct UninstallArgs {
    #[arg(long)]
    pub dry_run: bool,
    /// Uninstall even with protected instances.
    #[arg(long)]
    pub force: bool,
    #[arg(long, default_value = install::SYSTEMD_DIR)]
    pub unit_dir: PathBuf,
}

/// `registry reconfigure`.
pub(crate) fn reconfigure(home: &Path, args: ReconfigureArgs) -> anyhow::Result<()> {
    let i = instance::Instance::open(home, &args.instance)?;
    let before = i.settings().ok();
    manage::reconfigure(&i, &args.settings)?;
    let after = i.settings()?;
    println!("instance {:?} reconfigured", args.instance);
    apply(home, before.as_ref(), &after, args.reload)
}

/// Tells how a changed configuration gets served, and with `reload` has the running server
/// apply it.
pub(crate) fn apply(
    home: &Path,
    before: Option<&crate::config::Settings>,
    after: &crate::config::Settings,
    reload: bool,
) -> anyhow::Result<()> {
    if let Some(why) = before.and_then(|b| manage::restart_needed(b, after)) {
        println!("{why}: restart `registry serve` to apply it (a reload cannot)");
        return Ok(());
    }
    if !reload {
        println!("a reload applies it: `registry reconfigure --reload`, `systemctl reload registry`, or SIGHUP to `registry serve`");
        return Ok(());
    }
    let pid = manage::reload(home)?;
    println!("asked `registry serve` (process {pid}) to reload; its log says whether the configuration was applied");
    Ok(())
}

/// `registry install`.
pub(crate) fn install(home: &Path, args: InstallArgs) -> anyhow::Result<()> {
    let out = install::install(home, &args.user, &args.unit_dir, args.dry_run)?;
    print!("{out}");
    Ok(())
}

/// `registry uninstall`.
pub(crate) fn uninstall(home: &Path, args: UninstallArgs) -> anyhow::Result<()> {
    let out = install::uninstall(home, &args.unit_dir, args.force, args.dry_run)?;
    print!("{out}");
    Ok(())
}

/// `registry check`.
pub(crate) fn check(home: &Path) -> anyhow::Result<()> {
    print!("{}", manage::check(home)?);
    Ok(())
}

/// `registry instance …`.
pub(crate) fn instance(home: &Path, c: InstanceCommand) -> anyhow::Result<()> {
    match c {
        InstanceCommand::Create {
            name,
            hostname,
            listen,
            storage,
            protected,
        } => {
            manage::ensure_home(home)?;
            let options = manage::CreateOptions {
                hostname,
                listen,
                storage,
                protected,
            };
            let i = manage::create(home, &name, &options)?;
            println!("created instance {name:?} in {}", i.dir.display());
        }
        InstanceCommand::List => print!("{}", manage::list(home)?),
        InstanceCommand::Show { name } => {
            let i = instance::Instance::open(home, &name)?;
            print!("{}", manage::describe(&i, &i.settings()?));
        }
        InstanceCommand::Remove { name, force } => {
            manage::remove(home, &name, force)?;
            println!("removed instance {name:?} (its stored images were left in place)");
        }
    }
    Ok(())
}

/// `registry config`: the wizard, then what to do next.
pub(crate) fn config(home: &Path, args: &wizard::ConfigArgs) -> anyhow::Result<()> {
    manage::ensure_home(home)?;
    let i = instance::Instance::at(home, &args.instance)?;
    let answers = wizard::gather(&i, args)?;
    print!("{}", wizard::apply(home, &i, &answers)?);
    println!(
        "Instance {:?} is configured in {}.",
        i.name,
        i.dir.display()
    );
    println!(
        "Next: `registry check`, then `registry serve` (or `registry install` for a service)."
    );
    if !answers.auth.users().is_empty() {
        // Clients name the port unless it is HTTPS's (a proxy in front listens on 443).
        let port = answers
            .listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let host = match (port, &answers.tls) {
            (_, wizard::TlsAnswer::None) | (Some(443) | None, _) => answers.domain.clone(),
            (Some(p), _) => format!("{}:{p}", answers.domain),
        };
        println!("Then, from a client: docker login {host}");
    }
    Ok(())
}

/// `registry cert …`.
pub(crate) fn cert(home: &Path, c: CertCommand) -> anyhow::Result<()> {
    match c {
        CertCommand::InitCa {
            instance,
            name,
            days,
            force,
        } => {
            let i = instance::Instance::open(home, &instance)?;
            let name = name.unwrap_or_else(|| format!("{instance} registry CA"));
            let path = crate::cert::init_ca(&i.dir, &name, days, force)?;
            println!("created CA {name:?}: {}", path.display());
            println!("to require client certificates signed by it: registry reconfigure --instance {instance} client_ca=tls/ca.pem client_names=NAME,...");
        }
        CertCommand::Server {
            hosts,
            instance,
            days,
        } => {
            let i = instance::Instance::open(home, &instance)?;
            let (cert, key) = crate::cert::server(&i.dir, &hosts, days)?;
            manage::reconfigure(
                &i,
                &[
                    "tls_cert=tls/server.pem".into(),
                    "tls_key=tls/server-key.pem".into(),
                ],
            )?;
            println!(
                "signed a server certificate for {}: {} (key {})",
                hosts.join(", "),
                cert.display(),
                key.display()
            );
            println!(
                "instance {instance:?} now serves HTTPS with it; clients trust {}",
                crate::cert::ca_paths(&i.dir).0.display()
            );
        }
        CertCommand::Client {
            name,
            out,
            instance,
            days,
        } => {
            let i = instance::Instance::open(home, &instance)?;
            crate::cert::client(&i.dir, &name, &out, days)?;
            println!(
                "wrote ca.crt, client.cert and client.key for {name:?} to {}",
                out.display()
            );
        }
    }
    Ok(())
}

/// `registry user …`.
pub(crate) fn user(home: &Path, c: UserCommand) -> anyhow::Result<()> {
    match c {
        UserCommand::Add(a) => set_password(home, &a, false),
        UserCommand::Passwd(a) => set_password(home, &a, true),
        UserCommand::Remove { user, instance } => {
            let i = instance::Instance::open(home, &instance)?;
            manage::remove_user(&i, &user)?;
            println!("removed user {user:?} from instance {instance:?}");
            Ok(())
        }
        UserCommand::List { instance } => {
            let i = instance::Instance::open(home, &instance)?;
            for u in manage::users(&i)? {
                println!("{u}");
            }
            Ok(())
        }
    }
}

fn set_password(home: &Path, a: &UserArgs, replace: bool) -> anyhow::Result<()> {
    let i = instance::Instance::open(home, &a.instance)?;
    manage::check_user(&a.user)?;
    // Refused before a password is asked for.
    manage::expect_user(&i, &a.user, replace)?;
    let (password, generated) = manage::password_input(a.password_stdin)?;
    manage::set_user(&i, &a.user, &password, replace)?;
    let verb = if replace {
        "changed the password of"
    } else {
        "added"
    };
    println!("{verb} user {:?} in instance {:?}", a.user, a.instance);
    if generated {
        println!("password: {password}");
    }
    Ok(())
}
