//! Questions on the terminal (dialoguer), or, without one, refusals that name the flag that
//! answers the question.

use std::io::IsTerminal;

use anyhow::bail;
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, Input, Password, Select};

/// Asks questions on the terminal, or refuses to when non-interactive.
pub(super) struct Asker {
    pub(super) interactive: bool,
    theme: ColorfulTheme,
}

impl Asker {
    pub(super) fn new(non_interactive: bool) -> anyhow::Result<Asker> {
        let interactive = !non_interactive;
        if interactive && !std::io::stderr().is_terminal() {
            bail!("registry config asks questions on a terminal; without one, pass --non-interactive and the answers as flags (see --help)");
        }
        Ok(Asker {
            interactive,
            theme: ColorfulTheme::default(),
        })
    }

    pub(super) fn missing(flag: &str) -> anyhow::Error {
        anyhow::anyhow!("missing answer: {flag} (--non-interactive asks nothing)")
    }

    pub(super) fn say(&self, line: &str) {
        if self.interactive {
            eprintln!("{line}");
        }
    }

    pub(super) fn text(
        &mut self,
        prompt: &str,
        flag: &str,
        default: Option<String>,
        check: impl Fn(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<String> {
        if !self.interactive {
            let v = default.ok_or_else(|| Asker::missing(flag))?;
            check(&v)?;
            return Ok(v);
        }
        let mut input = Input::<String>::with_theme(&self.theme).with_prompt(prompt);
        if let Some(d) = default {
            input = input.default(d);
        }
        let v = input
            .validate_with(|s: &String| check(s.trim()).map_err(|e| e.to_string()))
            .interact_text()?;
        Ok(v.trim().to_owned())
    }

    pub(super) fn text_allow_empty(
        &mut self,
        prompt: &str,
        default: &str,
    ) -> anyhow::Result<String> {
        if !self.interactive {
            return Ok(default.to_owned());
        }
        let v = Input::<String>::with_theme(&self.theme)
            .with_prompt(prompt)
            .with_initial_text(default)
            .allow_empty(true)
            .interact_text()?;
        Ok(v.trim().to_owned())
    }

    pub(super) fn password(&mut self, prompt: &str) -> anyhow::Result<String> {
        Ok(Password::with_theme(&self.theme)
            .with_prompt(prompt)
            .allow_empty_password(true)
            .interact()?)
    }

    pub(super) fn select(
        &mut self,
        prompt: &str,
        flag: &str,
        choices: &[&str],
        default: Option<usize>,
    ) -> anyhow::Result<usize> {
        if !self.interactive {
            return default.ok_or_else(|| Asker::missing(flag));
        }
        Ok(Select::with_theme(&self.theme)
            .with_prompt(prompt)
            .items(choices)
            .default(default.unwrap_or(0))
            .interact()?)
    }

    pub(super) fn confirm(
        &mut self,
        prompt: &str,
        flag: &str,
        default: Option<bool>,
    ) -> anyhow::Result<bool> {
        if !self.interactive {
            return default.ok_or_else(|| Asker::missing(flag));
        }
        Ok(Confirm::with_theme(&self.theme)
            .with_prompt(prompt)
            .default(default.unwrap_or(false))
            .wait_for_newline(true)
            .interact()?)
    }
}
