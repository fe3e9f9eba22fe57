//! `strata`: one binary, one process per node.
//!
//! `serve` runs a node (every role of this version: meta voter, storage,
//! Keystone and Swift gateways); `admin` talks to a running cluster.

mod admin;
mod config;
mod node;
mod vhost;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "A storage-first cloud: Swift and Keystone on a replicated core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. Without --config: a one-node cluster with data in ./strata-data.
    Serve(ServeArgs),
    /// Benchmarks: Strata beside OpenStack Swift and the raw disk, or one workload.
    Bench(Box<strata_bench::BenchArgs>),
    /// Inspect a running cluster.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Node configuration file (see cluster-configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Password of the bootstrap admin (user `admin`, project `admin`).
    #[arg(long, env = "STRATA_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Nodes, Raft leader and term, ring version, per-disk usage.
    Status {
        /// A node's rpc address; defaults to the one of --config, else 127.0.0.1:7400.
        #[arg(long)]
        rpc: Option<String>,
        /// Read the rpc address from this node configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Block volumes (exported over NBD by every node).
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a thin volume.
    Create {
        name: String,
        /// Size in bytes, or with a K/M/G/T suffix (multiple of 4 KiB).
        size: String,
        /// A node's rpc address; defaults to 127.0.0.1:7400.
        #[arg(long)]
        rpc: Option<String>,
    },
    /// List volumes.
    List {
        #[arg(long)]
        rpc: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn".into()),
        )
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(node::serve(args)),
        Command::Bench(args) => strata_bench::run(*args),
        Command::Admin {
            command: AdminCommand::Status { rpc, config, json },
        } => {
            let addr = match (rpc, config) {
                (Some(a), _) => a,
                (None, Some(path)) => config::NodeConfig::load(&path)?.rpc_addr(),
                (None, None) => config::NodeConfig::default().rpc_addr(),
            };
            rt.block_on(admin::print_status(&addr, json))
        }
        Command::Admin {
            command: AdminCommand::Volume { command },
        } => {
            let default_rpc = || config::NodeConfig::default().rpc_addr();
            match command {
                VolumeCommand::Create { name, size, rpc } => {
                    let size = admin::parse_size(&size)?;
                    rt.block_on(admin::create_volume(
                        &rpc.unwrap_or_else(default_rpc),
                        &name,
                        size,
                    ))
                }
                VolumeCommand::List { rpc } => {
                    rt.block_on(admin::list_volumes(&rpc.unwrap_or_else(default_rpc)))
                }
            }
        }
    }
}
