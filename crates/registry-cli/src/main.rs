//! The `registry` binary: parses the command line and runs a subcommand.

mod cert;
mod client;
mod config;
mod install;
mod instance;
mod manage;
mod serve;
mod wizard;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// A fast, self-contained OCI container image registry.
#[derive(Parser)]
#[command(name = "registry", version, about, propagate_version = true)]
struct Cli {
    /// Where instances live [default: /etc/registry for root, else ~/.config/registry].
    #[arg(long, global = true, env = "REGISTRY_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API.
    ///
    /// Examples:
    ///   registry serve                                  (./data on http://127.0.0.1:5000)
    ///   registry serve --listen 0.0.0.0:5000 --storage /srv/registry
    ///   registry serve --config /etc/registry/registry.toml
    ///   registry serve --htpasswd ./htpasswd --tls-cert cert.pem --tls-key key.pem
    ///   registry serve --tls-cert cert.pem --tls-key key.pem --client-ca clients.pem \
    ///                  --client-names '*.clients.example.com' --allow-ip 10.0.0.0/8
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Set up an instance interactively: domain, authorization, storage, anonymous pull, IP
    /// allowlist, TLS. Re-running shows the current values as defaults; every question has a
    /// flag, and --non-interactive takes the flags alone.
    ///
    /// Examples:
    ///   registry config
    ///   registry config --instance team-b
    ///   registry config --non-interactive --domain registry.example.com --auth basic \
    ///       --user ann --tls ca --storage data --public-read false
    ///   registry config --non-interactive --domain r.example.com --auth mtls --client-ca create \
    ///       --client-names '*.ci.example.com' --tls ca --storage s3://bucket/prefix
    #[command(verbatim_doc_comment)]
    Config(Box<wizard::ConfigArgs>),
    /// Create, list, show or remove instances.
    ///
    /// Examples:
    ///   registry instance create default --hostname registry.example.com --listen 0.0.0.0:443
    ///   registry instance create team-b --hostname b.example.com --storage s3://bucket/team-b
    ///   registry instance list
    ///   registry instance show default
    ///   registry instance remove team-b
    #[command(verbatim_doc_comment, subcommand)]
    Instance(InstanceCommand),
    /// Add, remove or list an instance's users, or change a password (HTTP Basic, bcrypt).
    ///
    /// Examples:
    ///   registry user add ann                     (prints a generated password once)
    ///   echo "$PASS" | registry user add ci --password-stdin --instance team-b
    ///   registry user passwd ann --password-stdin
    ///   registry user list
    ///   registry user remove ann
    #[command(verbatim_doc_comment, subcommand)]
    User(UserCommand),
    /// Change an instance's settings: KEY=VALUE, validated as a whole before anything is written.
    ///
    /// An empty value removes a setting (its default applies). Lists are comma-separated.
    ///
    /// Examples:
    ///   registry reconfigure ip_allowlist=192.168.1.0/24,10.13.13.0/24
    ///   registry reconfigure --instance team-b public_read=true listen=0.0.0.0:443
    ///   registry reconfigure client_ca=tls/ca.pem client_names='*.ci.example.com'
    ///   registry reconfigure ip_allowlist=                (back to: everyone)
    #[command(verbatim_doc_comment, after_help = reconfigure_help())]
    Reconfigure {
        /// KEY=VALUE settings.
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
        #[arg(long, default_value = instance::DEFAULT)]
        instance: String,
    },
    /// A small CA per instance: server and client certificates for TLS and mutual TLS.
    ///
    /// Examples:
    ///   registry cert init-ca
    ///   registry cert server registry.example.com      (and configures the instance's TLS)
    ///   registry cert client ci.example.com --out /etc/docker/certs.d/registry.example.com
    #[command(verbatim_doc_comment, subcommand)]
    Cert(CertCommand),
    /// Log in to a registry: check the credentials, then store them in Docker's config.json.
    ///
    /// The password comes from --password-stdin, else from passwords.json (exported by
    /// `registry config`) for an instance with this host name, else from a prompt.
    ///
    /// Examples:
    ///   registry login registry.example.com
    ///   echo "$PASS" | registry login registry.example.com --username ci --password-stdin
    #[command(verbatim_doc_comment)]
    Login {
        #[command(flatten)]
        target: client::Target,
        #[arg(long, short)]
        username: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Print every repository:tag of a registry (credentials from Docker's config.json).
    ///
    /// Example:
    ///   registry list-tags registry.example.com
    #[command(verbatim_doc_comment)]
    ListTags {
        #[command(flatten)]
        target: client::Target,
    },
    /// Delete images by digest: pick them interactively and confirm, or name them with --yes.
    ///
    /// Deleting by digest removes every tag of that manifest. Unreferenced layers stay stored
    /// until garbage collection.
    ///
    /// Examples:
    ///   registry delete-tags registry.example.com
    ///   registry delete-tags registry.example.com --yes app:old tools/builder:1.2
    #[command(verbatim_doc_comment)]
    DeleteTags {
        #[command(flatten)]
        target: client::Target,
        /// repository:tag references to delete without asking (with --yes).
        #[arg(value_name = "REPO:TAG")]
        refs: Vec<String>,
        /// Do not ask: delete the named references.
        #[arg(long)]
        yes: bool,
        /// Then collect garbage on the local instance serving HOST (asked on a terminal).
        #[arg(long)]
        gc: bool,
    },
    /// Install a systemd service running `registry serve` for every instance, as a dedicated
    /// system user with sandboxing (writes only the config home and storage directories).
    ///
    /// Examples:
    ///   registry install --dry-run        (print the unit and the commands)
    ///   sudo registry install
    #[command(verbatim_doc_comment)]
    Install {
        /// Print what would be done.
        #[arg(long)]
        dry_run: bool,
        /// The system user the service runs as (created when missing).
        #[arg(long, default_value = install::SERVICE)]
        user: String,
        /// Where to write the unit; other than /etc/systemd/system only the file is written.
        #[arg(long, default_value = install::SYSTEMD_DIR)]
        unit_dir: PathBuf,
    },
    /// Stop and remove the systemd service (refused while a protected instance exists).
    Uninstall {
        #[arg(long)]
        dry_run: bool,
        /// Uninstall even with protected instances.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = install::SYSTEMD_DIR)]
        unit_dir: PathBuf,
    },
    /// Collect garbage while the registry serves: delete manifests, blob links and blobs that
    /// nothing reachable needs, and abandoned upload sessions. Safe with pushes in flight, on
    /// any number of nodes (see registry_core's gc module for the protocol).
    ///
    /// Examples:
    ///   registry gc --dry-run                     (what would go, from the default instance)
    ///   registry gc --delete-untagged --grace-period 30m
    ///   registry gc --storage s3://bucket/prefix
    #[command(verbatim_doc_comment)]
    Gc {
        #[command(flatten)]
        store: StoreArg,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Manifests no tag reaches are garbage too (children of tagged indexes and referrers
        /// of kept manifests stay).
        #[arg(long)]
        delete_untagged: bool,
        /// Keep whatever was written more recently than this (e.g. 0s, 30m) [default: the
        /// instance's gc.grace, else 1h].
        #[arg(long, value_name = "DURATION")]
        grace_period: Option<String>,
        /// Take over the lease of a collection that was killed, instead of waiting up to a
        /// minute for it to expire. Make sure no other collection runs.
        #[arg(long)]
        break_lease: bool,
    },
    /// Verify storage: re-hash every blob, check every manifest's references and every tag;
    /// report each problem with its key. --repair moves corrupt blobs and manifests aside
    /// (lost+found/) and drops links and tags that lead nowhere, so clients push them again.
    ///
    /// Exits 1 when problems were found and not repaired.
    ///
    /// Examples:
    ///   registry fsck                          (the default instance)
    ///   registry fsck --instance team-b --repair
    ///   registry fsck --storage /srv/registry
    ///   registry fsck --storage s3://bucket/prefix
    #[command(verbatim_doc_comment)]
    Fsck {
        #[command(flatten)]
        store: StoreArg,
        /// Fix what can be fixed (see above).
        #[arg(long)]
        repair: bool,
    },
    /// Validate every instance and print what would be served (never secrets).
    ///
    /// Example:
    ///   registry check
    #[command(verbatim_doc_comment)]
    Check,
}

#[derive(Subcommand)]
enum InstanceCommand {
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

/// Which storage a maintenance command works on.
#[derive(Args)]
struct StoreArg {
    /// The instance whose storage to use [default: default].
    #[arg(long, conflicts_with = "storage")]
    instance: Option<String>,
    /// A storage location instead (a directory, file:// or s3://bucket/prefix; S3 settings
    /// from AWS_* variables).
    #[arg(long)]
    storage: Option<String>,
}

impl StoreArg {
    fn location(&self, home: &std::path::Path) -> anyhow::Result<config::StorageLocation> {
        match &self.storage {
            Some(s) => config::parse_storage(s),
            None => {
                let name = self.instance.as_deref().unwrap_or(instance::DEFAULT);
                Ok(instance::Instance::open(home, name)?.settings()?.storage)
            }
        }
    }
}

#[derive(Subcommand)]
enum CertCommand {
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

fn reconfigure_help() -> String {
    format!("Keys:\n{}", manage::reconfigure_keys())
}

#[derive(Subcommand)]
enum UserCommand {
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
struct UserArgs {
    user: String,
    /// The instance [default: default].
    #[arg(long, default_value = instance::DEFAULT)]
    instance: String,
    /// Read the password from the first line of stdin instead of generating one.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML configuration file; flags given here override it.
    #[arg(long, env = "REGISTRY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    listen: Option<String>,
    /// Storage: a directory, a file:// URL, or memory:// [default: ./data].
    #[arg(long)]
    storage: Option<String>,
    /// Refuse DELETE of manifests, tags and blobs (405 UNSUPPORTED).
    #[arg(long)]
    no_delete: bool,
    /// Purge upload sessions idle for longer than this (e.g. 30m, 24h) [default: 24h].
    #[arg(long)]
    upload_max_age: Option<String>,
    /// Require HTTP Basic logins from this htpasswd file (bcrypt, $apr1$, {SHA}, $5$, $6$).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Verify client certificates against this PEM CA bundle (required unless --client-auth optional).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Whether client certificates are "required" or "optional" [default: required].
    #[arg(long, value_name = "MODE")]
    client_auth: Option<String>,
    /// Authorized client certificate names, comma-separated; `*` stands for one DNS label.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    client_names: Option<Vec<String>>,
    /// Only these addresses may connect (CIDRs, comma-separated) [default: all].
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    allow_ip: Option<Vec<String>>,
    /// Believe Forwarded / X-Forwarded-For from these proxies (CIDRs, comma-separated).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    trusted_proxies: Option<Vec<String>>,
    /// Let anyone pull without credentials (pushes and deletes still need an identity).
    #[arg(long)]
    public_read: bool,
}

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
        Command::Serve(args) => serve_command(&home, args),
        Command::Instance(c) => instance_command(&home, c),
        Command::User(c) => user_command(&home, c),
        Command::Config(args) => config_command(&home, &args),
        Command::Gc {
            store,
            dry_run,
            delete_untagged,
            grace_period,
            break_lease,
        } => gc_command(
            &home,
            &store,
            dry_run,
            delete_untagged,
            grace_period,
            break_lease,
        ),
        Command::Fsck { store, repair } => store
            .location(&home)
            .and_then(|location| run(fsck_command(location, repair))),
        Command::Install {
            dry_run,
            user,
            unit_dir,
        } => install::install(&home, &user, &unit_dir, dry_run).map(|out| print!("{out}")),
        Command::Uninstall {
            dry_run,
            force,
            unit_dir,
        } => install::uninstall(&home, &unit_dir, force, dry_run).map(|out| print!("{out}")),
        Command::Login {
            target,
            username,
            password_stdin,
        } => run(login_command(&home, target, username, password_stdin)),
        Command::ListTags { target } => run(async move {
            for (repo, tag) in client::list_tags(&target).await? {
                println!("{repo}:{tag}");
            }
            Ok(())
        }),
        Command::DeleteTags {
            target,
            refs,
            yes,
            gc,
        } => run(delete_tags_command(target.clone(), refs, yes))
            .and_then(|deleted| offer_gc(&home, &target, deleted && gc, deleted && !yes)),
        Command::Check => manage::check(&home).map(|report| print!("{report}")),
        Command::Reconfigure { settings, instance } => instance::Instance::open(&home, &instance)
            .and_then(|i| manage::reconfigure(&i, &settings))
            .map(|()| {
                println!("instance {instance:?} reconfigured (restart `registry serve` to apply)")
            }),
        Command::Cert(c) => cert_command(&home, c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn instance_command(home: &std::path::Path, c: InstanceCommand) -> anyhow::Result<()> {
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

async fn login_command(
    home: &std::path::Path,
    target: client::Target,
    username: Option<String>,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let host = target
        .host
        .rsplit_once(':')
        .map_or(target.host.as_str(), |(h, _)| h);
    let (user, password) = if password_stdin {
        let user = username.context("--password-stdin needs --username")?;
        let (password, _) = manage::password_input(true)?;
        (user, password)
    } else if let Some(found) = wizard::exported_password(home, host, username.as_deref())? {
        eprintln!("using the password of {:?} from passwords.json", found.0);
        found
    } else {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            anyhow::bail!("no password: use --username and --password-stdin");
        }
        let theme = dialoguer::theme::ColorfulTheme::default();
        let user = match username {
            Some(u) => u,
            None => dialoguer::Input::<String>::with_theme(&theme)
                .with_prompt("Username")
                .interact_text()?,
        };
        let password = dialoguer::Password::with_theme(&theme)
            .with_prompt("Password")
            .interact()?;
        (user, password)
    };
    let path = client::login(&target, &user, &password).await?;
    println!(
        "Login succeeded: {user} at {} (stored in {})",
        target.host,
        path.display()
    );
    Ok(())
}

/// After delete-tags: collects garbage on the local instance serving `target`, when asked to
/// (`run`) or when the person says so (`ask`).
fn offer_gc(
    home: &std::path::Path,
    target: &client::Target,
    run: bool,
    ask: bool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let host = target
        .host
        .rsplit_once(':')
        .map_or(target.host.as_str(), |(h, _)| h);
    let local = instance::Instance::all(home)?.into_iter().find(|i| {
        i.settings()
            .is_ok_and(|s| s.hostname.as_deref() == Some(host))
    });
    let Some(i) = local else {
        if run {
            anyhow::bail!(
                "--gc: no instance in {} serves {host}; run `registry gc` where it is served",
                home.display()
            );
        }
        return Ok(());
    };
    let go = run
        || (ask
            && std::io::stderr().is_terminal()
            && dialoguer::Confirm::with_theme(&dialoguer::theme::ColorfulTheme::default())
                .with_prompt(format!(
                    "Collect garbage on instance {:?} now, to free the space?",
                    i.name
                ))
                .default(true)
                .wait_for_newline(true)
                .interact()?);
    if !go {
        return Ok(());
    }
    let store = StoreArg {
        instance: Some(i.name.clone()),
        storage: None,
    };
    gc_command(home, &store, false, false, None, false)
}

/// Deletes picked or named images; returns whether anything was deleted.
async fn delete_tags_command(
    target: client::Target,
    refs: Vec<String>,
    yes: bool,
) -> anyhow::Result<bool> {
    let chosen = if yes {
        if refs.is_empty() {
            anyhow::bail!("--yes needs the references to delete (repository:tag ...)");
        }
        refs.iter()
            .map(|r| client::parse_ref(r))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        let all = client::list_tags(&target).await?;
        let offered = match refs.is_empty() {
            true => all,
            false => {
                let named = refs
                    .iter()
                    .map(|r| client::parse_ref(r))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                all.into_iter().filter(|r| named.contains(r)).collect()
            }
        };
        if offered.is_empty() {
            println!("no images to delete");
            return Ok(false);
        }
        match client::pick(&offered)? {
            Some(c) => c,
            None => {
                println!("nothing deleted");
                return Ok(false);
            }
        }
    };
    for (name, digest) in client::delete_tags(&target, &chosen).await? {
        println!("deleted {name} ({digest})");
    }
    println!("Stored layers are freed by garbage collection (`registry gc`).");
    Ok(true)
}

fn gc_command(
    home: &std::path::Path,
    store: &StoreArg,
    dry_run: bool,
    delete_untagged: bool,
    grace_period: Option<String>,
    break_lease: bool,
) -> anyhow::Result<()> {
    let (location, mut options) = match &store.storage {
        Some(s) => (
            config::parse_storage(s)?,
            registry_core::GcOptions::default(),
        ),
        None => {
            let name = store.instance.as_deref().unwrap_or(instance::DEFAULT);
            let settings = instance::Instance::open(home, name)?.settings()?;
            (settings.storage.clone(), serve::gc_options(&settings))
        }
    };
    options.dry_run = dry_run;
    options.break_lease = break_lease;
    options.delete_untagged |= delete_untagged;
    if let Some(g) = grace_period {
        options.grace = config::parse_duration(&g).context("--grace-period")?;
    }
    run(async move {
        let registry = registry_core::open::open(&location)?.registry();
        let verb = if dry_run { "would delete" } else { "deleted" };
        let summary = match registry
            .gc(&options, |d| {
                println!("{verb} {} {} ({} bytes)", d.kind, d.path, d.size)
            })
            .await
        {
            Ok(summary) => summary,
            Err(e @ registry_core::Error::GcRunning { .. }) => {
                anyhow::bail!("{e}; --break-lease takes it over")
            }
            Err(e) => return Err(anyhow::Error::new(e).context("gc stopped")),
        };
        println!(
            "{verb}: {} manifests, {} links, {} blobs; {} bytes freed; {} upload sessions removed; {} kept because a push needed them",
            summary.manifests, summary.links, summary.blobs, summary.bytes, summary.uploads, summary.pinned
        );
        Ok(())
    })
}

async fn fsck_command(location: config::StorageLocation, repair: bool) -> anyhow::Result<()> {
    let registry = registry_core::open::open(&location)?.registry();
    let summary = registry
        .fsck(repair, |problem| println!("{problem}"))
        .await
        .context("fsck stopped")?;
    println!(
        "checked {} blobs ({} bytes), {} links, {} manifests, {} tags: {} problems{}",
        summary.blobs,
        summary.blob_bytes,
        summary.links,
        summary.manifests,
        summary.tags,
        summary.problems,
        if repair {
            format!(", {} keys repaired", summary.repaired)
        } else {
            String::new()
        }
    );
    if summary.problems > 0 && !repair {
        anyhow::bail!(
            "{} problems found; `registry fsck --repair` fixes what it can",
            summary.problems
        );
    }
    Ok(())
}

fn config_command(home: &std::path::Path, args: &wizard::ConfigArgs) -> anyhow::Result<()> {
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
    if matches!(answers.auth, wizard::AuthAnswer::Basic(_)) {
        println!("Then, from a client: docker login {}", answers.domain);
    }
    Ok(())
}

fn cert_command(home: &std::path::Path, c: CertCommand) -> anyhow::Result<()> {
    match c {
        CertCommand::InitCa {
            instance,
            name,
            days,
            force,
        } => {
            let i = instance::Instance::open(home, &instance)?;
            let name = name.unwrap_or_else(|| format!("{instance} registry CA"));
            let path = cert::init_ca(&i.dir, &name, days, force)?;
            println!("created CA {name:?}: {}", path.display());
            println!("to require client certificates signed by it: registry reconfigure --instance {instance} client_ca=tls/ca.pem client_names=NAME,...");
        }
        CertCommand::Server {
            hosts,
            instance,
            days,
        } => {
            let i = instance::Instance::open(home, &instance)?;
            let (cert, key) = cert::server(&i.dir, &hosts, days)?;
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
                cert::ca_paths(&i.dir).0.display()
            );
        }
        CertCommand::Client {
            name,
            out,
            instance,
            days,
        } => {
            let i = instance::Instance::open(home, &instance)?;
            cert::client(&i.dir, &name, &out, days)?;
            println!(
                "wrote ca.crt, client.cert and client.key for {name:?} to {}",
                out.display()
            );
        }
    }
    Ok(())
}

fn user_command(home: &std::path::Path, c: UserCommand) -> anyhow::Result<()> {
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

fn set_password(home: &std::path::Path, a: &UserArgs, replace: bool) -> anyhow::Result<()> {
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

fn serve_command(home: &std::path::Path, args: ServeArgs) -> anyhow::Result<()> {
    let instances = instance::Instance::all(home)?;
    let ad_hoc = args.config.is_some() || args.storage.is_some() || instances.is_empty();
    if !ad_hoc {
        if let Some(flag) = instance_mode_conflict(&args) {
            anyhow::bail!("{flag} applies to a registry given by --config or --storage; the instances in {} are configured with `registry reconfigure`", home.display());
        }
        let mut all = Vec::new();
        for i in &instances {
            all.push((i.name.clone(), i.settings()?));
        }
        manage::check_addresses(&all)?;
        return run(serve::serve(all));
    }
    let mut raw = match &args.config {
        Some(path) => config::RawConfig::load(path)?,
        None => config::RawConfig::default(),
    };
    if args.listen.is_some() {
        raw.server.listen = args.listen;
    }
    if args.storage.is_some() {
        raw.storage.url = args.storage;
    }
    if args.no_delete {
        raw.api.delete = Some(false);
    }
    if args.upload_max_age.is_some() {
        raw.uploads.max_age = args.upload_max_age;
    }
    if args.htpasswd.is_some() {
        raw.auth.htpasswd = args.htpasswd;
    }
    if args.tls_cert.is_some() {
        raw.tls.cert = args.tls_cert;
        raw.tls.key = args.tls_key;
    }
    if args.client_ca.is_some() {
        raw.tls.client_ca = args.client_ca;
    }
    if args.client_auth.is_some() {
        raw.tls.client_auth = args.client_auth;
    }
    if args.client_names.is_some() {
        raw.tls.client_names = args.client_names;
    }
    if args.allow_ip.is_some() {
        raw.network.allow = args.allow_ip;
    }
    if args.trusted_proxies.is_some() {
        raw.network.trusted_proxies = args.trusted_proxies;
    }
    if args.public_read {
        raw.auth.public_read = Some(true);
    }
    let settings = raw.validate()?;
    run(serve::serve(vec![(instance::DEFAULT.to_owned(), settings)]))
}

fn run<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// A flag that only makes sense for an ad-hoc registry, if one was given.
fn instance_mode_conflict(a: &ServeArgs) -> Option<&'static str> {
    [
        (a.listen.is_some(), "--listen"),
        (a.no_delete, "--no-delete"),
        (a.upload_max_age.is_some(), "--upload-max-age"),
        (a.htpasswd.is_some(), "--htpasswd"),
        (a.tls_cert.is_some(), "--tls-cert"),
        (a.client_ca.is_some(), "--client-ca"),
        (a.client_auth.is_some(), "--client-auth"),
        (a.client_names.is_some(), "--client-names"),
        (a.allow_ip.is_some(), "--allow-ip"),
        (a.trusted_proxies.is_some(), "--trusted-proxies"),
        (a.public_read, "--public-read"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}
