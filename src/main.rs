//! `portico`: Kubernetes service networking in one binary.
//!
//! ```text
//!  portico controller   reconcilers against the Kubernetes API (leader-elected)
//!  portico local        the whole suite on one machine, from manifest files
//!  portico crds         prints Portico's CustomResourceDefinitions
//! ```
//!
//! Every subcommand's flags have an environment variable (`PORTICO_*`);
//! `portico <command> --help` documents them.

#![forbid(unsafe_code)]

mod cli;
mod cluster;
mod http;
mod local;
mod telemetry;

use clap::Parser;
use std::process::ExitCode;

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
    let cli = cli::Cli::parse();
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
            cli::Command::Local(args) => local::run(args).await,
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
