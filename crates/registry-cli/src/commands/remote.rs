//! The client commands: `registry login`, `list-tags` and `delete-tags` talk to a registry
//! over HTTP (see `client`), as a person at a terminal or a script would.

use std::path::Path;

use anyhow::Context as _;
use clap::Args;

use super::run;
use super::storage::{GcArgs, StoreArg};
use crate::{client, instance, manage, wizard};

/// The arguments of `registry login`.
#[derive(Args)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    pub target: client::Target,
    #[arg(long, short)]
    pub username: Option<String>,
    #[arg(long)]
    pub password_stdin: bool,
}

/// The arguments of `registry list-tags`.
#[derive(Args)]
pub(crate) struct ListTagsArgs {
    #[command(flatten)]
    pub target: client::Target,
}

/// The arguments of `registry delete-tags`.
#[derive(Args)]
pub(crate) struct DeleteTagsArgs {
    #[command(flatten)]
    pub target: client::Target,
    /// repository:tag references to delete without asking (with --yes).
    #[arg(value_name = "REPO:TAG")]
    pub refs: Vec<String>,
    /// Do not ask: delete the named references.
    #[arg(long)]
    pub yes: bool,
    /// Then collect garbage on the local instance serving HOST (asked on a terminal).
    #[arg(long)]
    pub gc: bool,
}

/// `registry list-tags`.
pub(crate) async fn list_tags(args: ListTagsArgs) -> anyhow::Result<()> {
    for (repo, tag) in client::list_tags(&args.target).await? {
        println!("{repo}:{tag}");
    }
    Ok(())
}

/// `registry delete-tags`, then the offer to collect garbage.
pub(crate) fn delete_tags(home: &Path, args: DeleteTagsArgs) -> anyhow::Result<()> {
    let DeleteTagsArgs {
        target,
        refs,
        yes,
        gc,
    } = args;
    let deleted = run(delete_chosen(target.clone(), refs, yes))?;
    offer_gc(home, &target, deleted && gc, deleted && !yes)
}

/// `registry login`.
pub(crate) async fn login(home: &Path, args: LoginArgs) -> anyhow::Result<()> {
    let LoginArgs {
        target,
        username,
        password_stdin,
    } = args;
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
fn offer_gc(home: &Path, target: &client::Target, run: bool, ask: bool) -> anyhow::Result<()> {
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
    let args = GcArgs {
        store,
        dry_run: false,
        delete_untagged: false,
        grace_period: None,
        break_lease: false,
        mirror_max_unused: None,
        mirror_max_bytes: None,
    };
    super::storage::gc(home, args)
}

/// Deletes picked or named images; returns whether anything was deleted.
async fn delete_chosen(
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
        let offered = if refs.is_empty() {
            all
        } else {
            let named = refs
                .iter()
                .map(|r| client::parse_ref(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            all.into_iter().filter(|r| named.contains(r)).collect()
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
