//! Serves an in-memory (or file-backed) block target as a vhost-user-blk
//! device, for trying the backend with QEMU:
//!
//! ```text
//! cargo run -p strata-vhost --example vhost-mem -- --socket /tmp/vhost.sock --size 64M
//! cargo run -p strata-vhost --example vhost-mem -- --socket /tmp/vhost.sock --file disk.img --size 64M
//! qemu-system-x86_64 -M pc,memory-backend=mem \
//!     -object memory-backend-memfd,id=mem,size=256M,share=on -m 256M \
//!     -chardev socket,id=c0,path=/tmp/vhost.sock -device vhost-user-blk-pci,chardev=c0 ...
//! ```
//!
//! Stops on SIGINT or SIGTERM (removing the socket file).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use strata_nbd::{BlockSizes, BlockTarget, FileTarget, MemTarget};
use strata_vhost::VhostBlkOptions;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Unix socket QEMU connects to.
    #[arg(long)]
    socket: PathBuf,
    /// Disk size, e.g. 64M or 1G (for --file: resize the file to it).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    size: u64,
    /// Back the disk with this file instead of memory.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Alignment the target demands of every I/O, like Strata volumes (bytes).
    #[arg(long, default_value_t = 4096)]
    target_block: u32,
    /// Largest payload of one target call (bytes).
    #[arg(long, default_value_t = 1 << 20)]
    target_max_io: u32,
    /// Logical block size shown to the guest (default: 4096 or --target-block).
    #[arg(long)]
    blk_size: Option<u32>,
    /// Virtqueues offered.
    #[arg(long, default_value_t = 16)]
    queues: u16,
    /// Device serial (GET_ID).
    #[arg(long)]
    serial: Option<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let sizes = BlockSizes {
        min: args.target_block,
        preferred: args.target_block.max(4096),
        max: args.target_max_io,
    };
    let target: Arc<dyn BlockTarget> = match &args.file {
        Some(path) => Arc::new(FileTarget::open(path, Some(args.size))?.with_block_sizes(sizes)),
        None => Arc::new(MemTarget::new(args.size).with_block_sizes(sizes)),
    };
    let options = VhostBlkOptions {
        blk_size: args.blk_size,
        num_queues: args.queues,
        serial: args.serial.clone(),
    };

    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal: shutting down");
        stop.cancel();
    });
    strata_vhost::serve_with_options(&args.socket, target, options, shutdown).await
}
