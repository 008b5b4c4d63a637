//! `torchfs`: one binary for every part of a torchfs deployment.

mod cmd;
mod config_file;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "torchfs",
    version,
    about = "torchfs: an erasure-coded distributed filesystem for PyTorch training",
    long_about = "torchfs: an erasure-coded distributed filesystem for PyTorch training.\n\n\
        `torchfs up` runs a whole local cluster (metad voters, storage nodes and a FUSE mount) \
        in the foreground. The other subcommands run one part each, for real deployments.\n\n\
        Every subcommand takes `--config FILE`: a TOML file whose table named after the \
        subcommand holds default values for its flags (keys are the long flag names); \
        flags on the command line win."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster (3 metad voters, 6 storage nodes) and mount it, in the foreground.
    Up(cmd::up::UpArgs),
    /// Run one metadata-service voter.
    Metad(cmd::metad::MetadArgs),
    /// Run one storage node.
    Storage(cmd::storage::StorageArgs),
    /// Mount a cluster with FUSE, in the foreground.
    Mount(cmd::mount::MountArgs),
    /// Show the cluster: leader, voters, storage nodes and their state.
    Status(cmd::status::StatusArgs),
    /// Make a directory tree an immutable dataset version: mounts then serve
    /// its metadata from a table loaded once, with no metad round trips.
    Freeze(cmd::freeze::FreezeArgs),
    /// Thaw a frozen tree (its root) so it can change again.
    Unfreeze(cmd::freeze::FreezeArgs),
    /// Check every stored fragment and rebuild the missing or corrupt ones
    /// in place (after nodes missed writes or lost their disk).
    Repair(cmd::repair::RepairArgs),
}

fn main() -> ExitCode {
    let args = match config_file::args_with_config_defaults(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("torchfs: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    cmd::init_logging();
    let result = match cli.command {
        Command::Up(a) => cmd::up::run(a),
        Command::Metad(a) => cmd::metad::run(a),
        Command::Storage(a) => cmd::storage::run(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Freeze(a) => cmd::freeze::run(a, true),
        Command::Unfreeze(a) => cmd::freeze::run(a, false),
        Command::Repair(a) => cmd::repair::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the problem; the causes follow on the same line.
            eprintln!("torchfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
