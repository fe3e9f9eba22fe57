//! Serves one NBD export backed by memory or a file.
//!
//! ```text
//! cargo run -p strata-nbd --example nbd_serve -- --size 1G --listen 127.0.0.1:10809
//! qemu-img info nbd://127.0.0.1:10809/disk
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use strata_nbd::{BlockTarget, Exports, FileTarget, MemTarget, Server};

#[derive(Parser, Debug)]
#[command(about = "Serve a memory- or file-backed NBD export")]
struct Args {
    /// Export size, with optional K/M/G/T suffix (required without --file;
    /// with --file, resizes the file).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Back the export with this (sparse) file instead of memory.
    #[arg(long)]
    file: Option<PathBuf>,
    /// TCP address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// Unix socket path to listen on.
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Export name.
    #[arg(long, default_value = "disk")]
    name: String,
    /// Refuse writes.
    #[arg(long)]
    read_only: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let target: Arc<dyn BlockTarget> = match (&args.file, args.size) {
        (Some(path), size) if args.read_only && size.is_none() => {
            Arc::new(FileTarget::open_read_only(path)?)
        }
        (Some(path), size) => Arc::new(FileTarget::open(path, size)?),
        (None, Some(size)) => Arc::new(MemTarget::new(size).with_read_only(args.read_only)),
        (None, None) => return Err("--size or --file is required".into()),
    };
    let exports = Exports::new();
    exports.add(args.name.clone(), Arc::clone(&target))?;
    exports.set_default(Some(args.name.clone()));
    let server = Server::new(exports);

    let listen = match (&args.listen, &args.unix) {
        (None, None) => Some("127.0.0.1:10809".to_string()),
        (l, _) => l.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = listen {
        let l = tokio::net::TcpListener::bind(&addr).await?;
        println!(
            "serving {:?} ({} bytes) on nbd://{}/{}",
            args.name,
            target.size_bytes(),
            l.local_addr()?,
            args.name
        );
        let s = server.clone();
        tasks.spawn(async move { s.serve_tcp(l).await });
    }
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path)?;
        println!(
            "serving {:?} on nbd+unix:///{}?socket={}",
            args.name,
            args.name,
            path.display()
        );
        let s = server.clone();
        tasks.spawn(async move { s.serve_unix(l).await });
    }
    tokio::select! {
        r = tasks.join_next() => {
            if let Some(r) = r {
                r??;
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
