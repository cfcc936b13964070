//! A fault-injecting TCP proxy (issue 14, item 6): put between a client and a server (or
//! between two nodes), it adds a network's delay with jitter, loses segments (delayed by
//! a retransmission timeout, or discarded), caps the bandwidth, and cuts connections on
//! command or at random. Named profiles (`lan`, `fibre`, `4g`, `3g`, `2g`) say how.
//!
//! [`Proxy::start`] runs it on its own threads; its [`Control`] changes the profile, cuts
//! every open connection, or refuses new ones, while it runs (the `faultproxy` binary
//! exposes the same over a line-based control socket).
//!
//! ```no_run
//! use plafond_examples::faultproxy::{Profile, Proxy};
//!
//! let upstream = "127.0.0.1:7379".parse().unwrap();
//! let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), upstream, Profile::named("4g")?)?;
//! println!("clients connect to {}", proxy.addr());
//! proxy.control().cut_all();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod limits;
mod link;
pub mod profile;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use link::Direction;
pub use profile::{Loss, Profile, ProfileError, PROFILE_NAMES};

use limits::{CONNECTIONS_MAX, STOP_POLL, UPSTREAM_CONNECT_TIMEOUT};

/// What the proxy has done so far.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    /// Connections cut by [`Control::cut_all`].
    pub cut: AtomicU64,
    /// Connections cut at random (the profile's `cut_mean`).
    pub cut_at_random: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub segments_lost: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub open: AtomicUsize,
}

/// The proxy's knobs, shared by its connections and whoever drives the faults.
#[derive(Debug)]
pub struct Control {
    profile: Mutex<Arc<Profile>>,
    refusing: AtomicBool,
    /// Bumped by every `cut_all`: each connection watches it.
    cuts: watch::Sender<u64>,
    pub counters: Counters,
}

impl Control {
    fn new(profile: Profile) -> Control {
        Control {
            profile: Mutex::new(Arc::new(profile)),
            refusing: AtomicBool::new(false),
            cuts: watch::Sender::new(0),
            counters: Counters::default(),
        }
    }

    /// The profile in force (each segment reads it when it is read).
    pub fn profile(&self) -> Arc<Profile> {
        self.profile.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Changes the profile for every byte read from now on, on every connection (a
    /// profile out of range is refused, and the one in force stays).
    pub fn set_profile(&self, profile: Profile) -> Result<(), ProfileError> {
        let profile = Arc::new(profile.validated()?);
        *self.profile.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = profile;
        Ok(())
    }

    /// Resets every open connection now (both sides see a reset, as when a middlebox
    /// drops its state); new connections are accepted as before.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// While `refusing`, every new connection is reset as soon as it is accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::Relaxed)
    }
}

/// A running proxy: stopped, with every connection closed, when dropped.
pub struct Proxy {
    addr: SocketAddr,
    control: Arc<Control>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (port 0: any) and carries every connection to `upstream`
    /// through `profile` (refused if out of range), on a runtime of its own (two threads).
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: Profile,
    ) -> std::io::Result<Proxy> {
        let profile = profile
            .validated()
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("faultproxy")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control::new(profile));
        let stop = Arc::new(AtomicBool::new(false));
        let (serving, stopping) = (control.clone(), stop.clone());
        let thread =
            std::thread::Builder::new().name("faultproxy-accept".into()).spawn(move || {
                runtime.block_on(serve(listener, upstream, serving, stopping));
                // Open connections end with the runtime.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Proxy { addr, control, stop, thread: Some(thread) })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The knobs.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.control.cut_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts until `stop`, each connection on a task of its own.
async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    control: Arc<Control>,
    stop: Arc<AtomicBool>,
) {
    let mut seed = 0x5eed_u64;
    while !stop.load(Ordering::Relaxed) {
        let accepted = match tokio::time::timeout(STOP_POLL, listener.accept()).await {
            Ok(Ok((client, _))) => client,
            // Out of descriptors, or a connection reset before it was accepted: go on.
            Ok(Err(_)) => {
                tokio::time::sleep(STOP_POLL).await;
                continue;
            }
            Err(_) => continue,
        };
        let full = control.open_connections() >= CONNECTIONS_MAX;
        if full || control.refusing.load(Ordering::Relaxed) {
            control.counters.refused.fetch_add(1, Ordering::Relaxed);
            reset(&accepted);
            continue;
        }
        control.counters.accepted.fetch_add(1, Ordering::Relaxed);
        seed = seed.wrapping_add(0x9e37_79b9);
        tokio::spawn(connection(accepted, upstream, control.clone(), seed));
    }
}

/// Carries one connection both ways until it ends, is cut, or its random lifetime ends.
async fn connection(mut client: TcpStream, upstream: SocketAddr, control: Arc<Control>, seed: u64) {
    let _open = OpenGuard::new(&control.counters.open);
    let connected = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream));
    let mut server = match connected.await {
        Ok(Ok(server)) => server,
        _ => {
            control.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut cuts = control.cuts.subscribe();
    let mut rng = crate::sample::Rng::new(seed);
    let lifetime = control.profile().cut_mean.map(|mean| {
        // Exponential: a memoryless cut, as independent failures are.
        let draw = -(1.0 - rng.unit()).ln();
        mean.mul_f64(draw).min(limits::DELAY_MAX)
    });
    let cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = link::pump(client_read, server_write, Direction::Up, &control, rng.next_u64());
        let down = link::pump(server_read, client_write, Direction::Down, &control, rng.next_u64());
        let random_cut = async {
            match lifetime {
                Some(lifetime) => tokio::time::sleep(lifetime).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => None,
            _ = cuts.changed() => Some(&control.counters.cut),
            _ = random_cut => Some(&control.counters.cut_at_random),
        }
    };
    if let Some(counter) = cut {
        counter.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        reset(&server);
    }
}

/// Makes the coming close a reset (RST), not an orderly end (FIN): a cut, not a goodbye.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Counts a connection open for as long as it lives.
struct OpenGuard<'a>(&'a AtomicUsize);

impl<'a> OpenGuard<'a> {
    fn new(open: &'a AtomicUsize) -> OpenGuard<'a> {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
