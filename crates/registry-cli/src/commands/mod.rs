//! The subcommands: each module holds its commands' arguments beside the code that runs them.

pub(crate) mod admin;
pub(crate) mod remote;
pub(crate) mod serve;
pub(crate) mod storage;
pub(crate) mod token;

/// Runs async work on a fresh runtime.
pub(crate) fn run<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
