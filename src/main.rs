//! The `portico` binary; see the library for what each command does.

#![forbid(unsafe_code)]

use clap::Parser;
use portico::{cli, cluster, dns, explain, local, node, telemetry};
use std::process::ExitCode;

/// mimalloc: glibc's allocator spends much of a large `portico local` run
/// consolidating free chunks, and keeps the freed memory resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `portico crds`: prints every CRD, or writes one file each.
fn crds(args: cli::CrdsArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    for (file, yaml) in portico_crds::all() {
        match &args.out_dir {
            Some(dir) => {
                let path = dir.join(file);
                std::fs::write(&path, &yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut cli = cli::Cli::parse();
    // `explain` prints an answer, not a service's log: only warnings, unless
    // asked for more.
    if matches!(cli.command, cli::Command::Explain(_))
        && std::env::var_os("PORTICO_LOG").is_none()
        && !std::env::args().any(|a| a.starts_with("--log-level"))
    {
        cli.log.log_level = "warn".into();
    }
    telemetry::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Controller(args) => cluster::run(args).await,
            cli::Command::Dns(args) => dns::run(args).await,
            cli::Command::Node(args) => node::run(args).await,
            cli::Command::Local(args) => local::run(args).await,
            cli::Command::Explain(args) => explain::run(args).await,
            cli::Command::Crds(args) => crds(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
