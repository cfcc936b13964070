//! plafond's TCP server program (SPEC §9): flags → engine and settings → [`plafond_server::run`]
//! until SIGTERM or SIGINT. Everything else lives in the `plafond-server` library.

/// Every allocation of the server goes through mimalloc: commands and replies are allocated
/// on the I/O threads and freed on the writer's, which glibc's malloc makes costly
/// (`docs/DECISIONS.md`, allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use plafond_server::options::ServerArgs;
use plafond_server::{stats, SHUTDOWN_GRACE};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = ServerArgs::parse();
    let (engine, mut config) = plafond_server::open::open(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.io_threads())
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let addr = args.listen_addr()?;
        let listener =
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        if let Some(port) = args.metrics_port {
            // Loopback only (SPEC §15): the numbers are for the operator's own scraper.
            let metrics = TcpListener::bind(("127.0.0.1", port))
                .await
                .with_context(|| format!("cannot serve metrics on 127.0.0.1:{port}"))?;
            println!("{}", plafond_server::metrics::describe(metrics.local_addr()?));
            config.metrics = Some(metrics);
        }
        println!("listening on {}", listener.local_addr()?);
        println!("{}", stats::health_line(&engine.health()));
        std::io::stdout().flush()?;
        let shutdown = async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        plafond_server::run(engine.clone(), listener, shutdown, config).await?;
        anyhow::Ok(())
    });
    // Every connection task is gone after this, so `engine` holds the last reference.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match Arc::try_unwrap(engine) {
        // Dropping the engine lets the shards finish what was submitted and the writer
        // flush the log.
        Ok(engine) => drop(engine),
        Err(_) => eprintln!("server: a task still holds the engine; it stops at exit"),
    }
    eprintln!("stopped");
    served
}
