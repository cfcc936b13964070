//! The fault proxy (examples/src/faultproxy): bytes cross it intact and in order, the
//! latency and bandwidth it adds are at least what the profile asks, and its cuts cut.
//! Its upstream is an echo server on a thread of this test.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use plafond_examples::faultproxy::{Loss, Profile, Proxy};
use plafond_examples::sample::Rng;

/// An echo server: every byte read is written back, on a thread per connection.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("an address");
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().expect("clones");
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}

fn proxy(profile: Profile) -> Proxy {
    Proxy::start("127.0.0.1:0".parse().expect("an address"), echo_server(), profile)
        .expect("the proxy starts")
}

fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Sends `bytes` on one thread while reading the echo on this one.
fn round_trip(stream: &TcpStream, bytes: &[u8]) -> Vec<u8> {
    let mut writer = stream.try_clone().expect("clones");
    let sent = bytes.to_vec();
    let sending = std::thread::spawn(move || writer.write_all(&sent).expect("writes"));
    let mut echoed = vec![0u8; bytes.len()];
    (&*stream).read_exact(&mut echoed).expect("the echo comes back whole");
    sending.join().expect("the writer");
    echoed
}

#[test]
fn bytes_cross_intact_and_in_order_through_jitter_loss_and_a_cap() {
    let profile = Profile {
        name: "rough".into(),
        rtt: Duration::from_millis(10),
        jitter: Duration::from_millis(20),
        loss: 0.05,
        loss_kind: Loss::Retransmit,
        up_bytes_per_s: Some(4_000_000),
        down_bytes_per_s: Some(4_000_000),
        cut_mean: None,
    };
    let proxy = proxy(profile);
    let stream = connect(&proxy);
    let bytes = random_bytes(400_000, 7);
    let echoed = round_trip(&stream, &bytes);
    assert!(echoed == bytes, "the echo differs from what was sent");
    let counters = &proxy.control().counters;
    assert!(counters.segments_lost.load(Ordering::Relaxed) > 0, "5 % of ~550 segments lost");
    assert_eq!(counters.bytes_up.load(Ordering::Relaxed), bytes.len() as u64);
}

#[test]
fn every_round_trip_takes_at_least_the_profiles_rtt() {
    let rtt = Duration::from_millis(40);
    let proxy = proxy(Profile { rtt, jitter: Duration::from_millis(5), ..Profile::none() });
    let stream = connect(&proxy);
    for round in 0..10u8 {
        let started = Instant::now();
        assert_eq!(round_trip(&stream, &[round; 16]), [round; 16]);
        // Each way is half the RTT, and the echo crosses both ways.
        let took = started.elapsed();
        assert!(took >= rtt, "round {round} took {took:?}, less than the profile's {rtt:?}");
    }
}

#[test]
fn the_bandwidth_cap_holds_the_rate_down() {
    let cap_bytes_per_s = 500_000;
    let profile = Profile { up_bytes_per_s: Some(cap_bytes_per_s), ..Profile::none() };
    let proxy = proxy(profile);
    let stream = connect(&proxy);
    let bytes = random_bytes(250_000, 9);
    let started = Instant::now();
    assert!(round_trip(&stream, &bytes) == bytes);
    let took = started.elapsed();
    // 250 kB at 500 kB/s is 0.5 s; a millisecond of burst is allowed.
    assert!(took >= Duration::from_millis(490), "250 kB crossed a 500 kB/s cap in {took:?}");
}

/// Whether the connection is dead: a read ends (EOF) or fails with a reset.
fn is_cut(stream: &TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("a timeout");
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn a_cut_resets_open_connections_and_new_ones_work() {
    let proxy = proxy(Profile::named("lan").expect("a profile"));
    let first = connect(&proxy);
    let second = connect(&proxy);
    assert_eq!(round_trip(&first, b"before"), b"before");
    assert_eq!(round_trip(&second, b"before"), b"before");
    proxy.control().cut_all();
    assert!(is_cut(&first), "the first connection survived the cut");
    assert!(is_cut(&second), "the second connection survived the cut");
    assert_eq!(proxy.control().counters.cut.load(Ordering::Relaxed), 2);
    let after = connect(&proxy);
    assert_eq!(round_trip(&after, b"after"), b"after");

    proxy.control().set_refusing(true);
    let refused = connect(&proxy);
    assert!(is_cut(&refused), "a connection made while refusing was carried");
    proxy.control().set_refusing(false);
    let healed = connect(&proxy);
    assert_eq!(round_trip(&healed, b"healed"), b"healed");
}

#[test]
fn connections_are_cut_at_random_when_the_profile_says_so() {
    let profile = Profile { cut_mean: Some(Duration::from_millis(50)), ..Profile::none() };
    let proxy = proxy(profile);
    let stream = connect(&proxy);
    assert!(is_cut(&stream), "a connection with a 50 ms mean lifetime lived 5 s");
    assert_eq!(proxy.control().counters.cut_at_random.load(Ordering::Relaxed), 1);
}

#[test]
fn discarded_segments_never_arrive() {
    let profile = Profile { loss: 1.0, loss_kind: Loss::Discard, ..Profile::none() };
    let proxy = proxy(profile);
    let stream = connect(&proxy);
    (&stream).write_all(b"lost").expect("writes");
    stream.set_read_timeout(Some(Duration::from_millis(300))).expect("a timeout");
    let mut byte = [0u8; 1];
    let read = (&stream).read(&mut byte);
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a discarded segment arrived: {read:?}"
    );
    let counters = &proxy.control().counters;
    assert_eq!(counters.bytes_up.load(Ordering::Relaxed), 0);
    assert!(counters.segments_lost.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_profile_changed_at_run_time_applies_to_open_connections() {
    let proxy = proxy(Profile::none());
    let stream = connect(&proxy);
    assert_eq!(round_trip(&stream, b"fast"), b"fast");
    let rtt = Duration::from_millis(80);
    proxy.control().set_profile(Profile { rtt, ..Profile::none() }).expect("a valid profile");
    let started = Instant::now();
    assert_eq!(round_trip(&stream, b"slow"), b"slow");
    assert!(started.elapsed() >= rtt, "the new profile's delay was not applied");
    let refused = proxy.control().set_profile(Profile { loss: 2.0, ..Profile::none() });
    assert!(refused.is_err(), "a loss above 1 was accepted");
    assert_eq!(proxy.control().profile().rtt, rtt, "a refused profile replaced the good one");
}
