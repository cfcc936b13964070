//! faultproxy: a fault-injecting TCP proxy (issue 14, item 6), thin over
//! `plafond_examples::faultproxy`.
//!
//! ```sh
//! cargo run --release --example faultproxy -- --listen 127.0.0.1:7380 \
//!     --upstream 127.0.0.1:7379 --profile 4g --control 127.0.0.1:7381
//! printf 'cut\n' | nc -q1 127.0.0.1 7381      # resets every open connection
//! ```
//!
//! The control socket takes one command per line and answers one line: `cut`,
//! `refuse on|off`, `profile NAME`, `stats`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::Parser;

use plafond_examples::faultproxy::limits::CONTROL_LINE_BYTES_MAX;
use plafond_examples::faultproxy::{Control, Profile, Proxy};

/// faultproxy: carries TCP connections to --upstream through a network profile.
#[derive(Debug, Parser)]
#[command(name = "faultproxy")]
struct ProxyArgs {
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:7380")]
    listen: SocketAddr,
    /// Where connections go.
    #[arg(long, default_value = "127.0.0.1:7379")]
    upstream: SocketAddr,
    /// none, lan, fibre, 4g, 3g or 2g.
    #[arg(long, default_value = "lan", value_parser = |name: &str| Profile::named(name))]
    profile: Profile,
    /// Cut each connection after a random lifetime of this mean, in milliseconds.
    #[arg(long, value_name = "MS")]
    cut_mean_ms: Option<u64>,
    /// A line-based control socket (`cut`, `refuse on|off`, `profile NAME`, `stats`).
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("faultproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = ProxyArgs::parse();
    let mut profile = args.profile;
    profile.cut_mean = args.cut_mean_ms.map(std::time::Duration::from_millis);
    let profile = profile.validated()?;
    eprintln!("faultproxy: {profile}");
    let proxy = Proxy::start(args.listen, args.upstream, profile)?;
    println!("listening on {}", proxy.addr());
    match args.control {
        Some(addr) => {
            let listener = TcpListener::bind(addr)?;
            eprintln!("faultproxy: control on {}", listener.local_addr()?);
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = serve_control(stream, proxy.control());
            }
        }
        // Runs until killed.
        None => loop {
            std::thread::park();
        },
    }
    Ok(())
}

/// Answers each command line of one control connection.
fn serve_control(stream: TcpStream, control: &Control) -> std::io::Result<()> {
    let mut reply = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        // One line at most CONTROL_LINE_BYTES_MAX: a longer one is refused, not buffered.
        let limit = CONTROL_LINE_BYTES_MAX as u64 + 1;
        if (&mut reader).take(limit).read_line(&mut line)? == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            writeln!(reply, "ERR line too long")?;
            return Ok(());
        }
        writeln!(reply, "{}", command(line.trim(), control))?;
    }
}

fn command(line: &str, control: &Control) -> String {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("cut"), None) => {
            control.cut_all();
            "OK".into()
        }
        (Some("refuse"), Some(on)) if on == "on" || on == "off" => {
            control.set_refusing(on == "on");
            "OK".into()
        }
        (Some("profile"), Some(name)) => {
            match Profile::named(name).and_then(|profile| control.set_profile(profile)) {
                Ok(()) => "OK".into(),
                Err(error) => format!("ERR {error}"),
            }
        }
        (Some("stats"), None) => {
            let c = &control.counters;
            let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
            format!(
                "open={} accepted={} refused={} cut={} cut_at_random={} lost_segments={} \
                 bytes_up={} bytes_down={}",
                control.open_connections(),
                load(&c.accepted),
                load(&c.refused),
                load(&c.cut),
                load(&c.cut_at_random),
                load(&c.segments_lost),
                load(&c.bytes_up),
                load(&c.bytes_down)
            )
        }
        _ => "ERR commands: cut, refuse on|off, profile NAME, stats".into(),
    }
}
