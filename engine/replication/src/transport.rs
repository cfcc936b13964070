//! Raft messages between replicas: one TCP connection to each peer for what this node
//! sends, and a listener for what peers send. A frame is a length (u32 little-endian) and
//! a protobuf `raft::prelude::Message`. Connections to peers leave from this node's own
//! address, so that a partition of that address (nftables on loopback) cuts them.
//!
//! Nothing here retries a message: Raft sends again whatever was lost, so a full outbox,
//! a failed connection or a write that times out drops messages and moves on.
//!
//! The same listener serves the pulls of a snapshot's files ([`crate::pull`]): such a
//! connection starts with [`PULL_HELLO`] where a frame's length would be.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use protobuf::Message as _;
use raft::prelude::Message;

use crate::cluster::Cluster;
use crate::limits::{
    CONNECTIONS_MAX, CONNECT_TIMEOUT, FRAME_BYTES_MAX, IDLE_CHECK_AFTER, OUTBOX_MESSAGES_MAX,
    RECONNECT_INTERVAL, SEND_TIMEOUT,
};
use crate::pull::{self, PULL_HELLO};
use crate::snapshot::Snapshots;

/// The sending side, per peer, and the threads behind it.
pub struct Transport {
    outboxes: Vec<(u64, Sender<Message>)>,
    stop: Arc<AtomicBool>,
    listen_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Listens on this node's Raft address (bound before it returns, so a peer can connect
    /// at once) and starts a sender per peer; received messages go to `inbox`.
    pub fn start(
        cluster: &Cluster,
        inbox: Sender<Message>,
        snapshots: Arc<Snapshots>,
    ) -> std::io::Result<Transport> {
        let me = cluster.me().clone();
        let listener = TcpListener::bind(me.raft_addr())?;
        let listen_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let members: Vec<u64> = cluster.voters();
        let mut threads = Vec::new();
        threads.push(std::thread::Builder::new().name("plafond-raft-listen".into()).spawn({
            let stop = stop.clone();
            move || listen(listener, me.id, members, inbox, snapshots, stop)
        })?);
        let mut outboxes = Vec::new();
        for peer in cluster.peers() {
            let (sender, receiver) = bounded(OUTBOX_MESSAGES_MAX);
            let (from, to) = (cluster.me().host, peer.raft_addr());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("plafond-raft-to-{}", peer.id))
                    .spawn(move || send_loop(from, to, receiver, stop))?,
            );
            outboxes.push((peer.id, sender));
        }
        Ok(Transport { outboxes, stop, listen_addr, threads })
    }

    /// Queues `message` for its peer; drops it if the peer's outbox is full.
    pub fn send(&self, message: Message) {
        let Some((_, outbox)) = self.outboxes.iter().find(|(id, _)| *id == message.to) else {
            return;
        };
        match outbox.try_send(message) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Stops every thread and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.outboxes.clear();
        // Wakes the listener blocked in `accept`.
        let _ = TcpStream::connect_timeout(&self.listen_addr, CONNECT_TIMEOUT);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

fn listen(
    listener: TcpListener,
    me: u64,
    members: Vec<u64>,
    inbox: Sender<Message>,
    snapshots: Arc<Snapshots>,
    stop: Arc<AtomicBool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if open.load(Ordering::Acquire) >= CONNECTIONS_MAX {
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let (inbox, members, stop, open) =
            (inbox.clone(), members.clone(), stop.clone(), open.clone());
        let snapshots = snapshots.clone();
        let spawned =
            std::thread::Builder::new().name("plafond-raft-from".into()).spawn(move || {
                receive(stream, me, &members, &inbox, &snapshots, &stop);
                open.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            eprintln!("plafond: raft: cannot start a reader thread; a peer's messages wait");
        }
    }
}

/// Reads frames until the peer closes, sends garbage, or the node stops; or serves a
/// snapshot's pulls, if that is what the connection asks first.
fn receive(
    stream: TcpStream,
    me: u64,
    members: &[u64],
    inbox: &Sender<Message>,
    snapshots: &Snapshots,
    stop: &AtomicBool,
) {
    // A timeout, so that a silent peer does not keep the thread past a stop.
    if stream.set_read_timeout(Some(SEND_TIMEOUT)).is_err() {
        return;
    }
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut frame = Vec::new();
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        let mut length = [0u8; 4];
        match reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if is_timeout(&error) => continue,
            Err(_) => return,
        }
        let length = u32::from_le_bytes(length);
        if first && length == PULL_HELLO {
            let mut peer = [0u8; 8];
            if read_whole(&mut reader, &mut peer, stop).is_err() {
                return;
            }
            let peer = u64::from_le_bytes(peer);
            if members.contains(&peer) && peer != me {
                pull::serve(reader, peer, snapshots, stop);
            }
            return;
        }
        first = false;
        let length = length as usize;
        if length > FRAME_BYTES_MAX {
            return;
        }
        frame.resize(length, 0);
        if read_whole(&mut reader, &mut frame, stop).is_err() {
            return;
        }
        let Ok(message) = Message::parse_from_bytes(&frame) else { return };
        // Only members speak, and only to this node.
        if message.to != me || !members.contains(&message.from) {
            return;
        }
        if inbox.send(message).is_err() {
            return;
        }
        frame.clear();
        frame.shrink_to(1 << 20);
    }
}

/// `read_exact`, going on through read timeouts (a large frame may take a while).
fn read_whole(
    reader: &mut impl Read,
    mut buffer: &mut [u8],
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !buffer.is_empty() {
        match reader.read(buffer) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => buffer = &mut buffer[read..],
            Err(error) if is_timeout(&error) && !stop.load(Ordering::Acquire) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn send_loop(
    from: std::net::IpAddr,
    to: SocketAddr,
    outbox: Receiver<Message>,
    stop: Arc<AtomicBool>,
) {
    let mut connection: Option<BufWriter<TcpStream>> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut last_write = Instant::now();
    let mut frame = Vec::new();
    while let Ok(first) = outbox.recv() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let idle = last_write.elapsed() >= IDLE_CHECK_AFTER;
        if idle && connection.as_ref().is_some_and(|writer| closed_by_peer(writer.get_ref())) {
            // Not a failed attempt: connect again at once.
            (connection, last_attempt) = (None, None);
        }
        if connection.is_none() && last_attempt.is_none_or(|at| at.elapsed() >= RECONNECT_INTERVAL)
        {
            last_attempt = Some(Instant::now());
            connection =
                connect(from, to).ok().map(|stream| BufWriter::with_capacity(1 << 16, stream));
        }
        let Some(writer) = connection.as_mut() else {
            // Unreachable now: what queued meanwhile is stale, Raft resends.
            while outbox.try_recv().is_ok() {}
            continue;
        };
        let mut written = write_frame(writer, &first, &mut frame);
        while written.is_ok() {
            let Ok(next) = outbox.try_recv() else { break };
            written = write_frame(writer, &next, &mut frame);
        }
        if written.and_then(|()| writer.flush()).is_err() {
            connection = None;
        }
        last_write = Instant::now();
    }
}

/// Whether the peer closed this connection. A peer never writes on it, so anything but
/// "nothing to read yet" means it is gone (end of stream, a reset). Without this check,
/// a message written after a peer restarted or a link was cut and healed went into the
/// dead socket without an error and was lost, and only the next one reconnected: after
/// a healed cut between the two followers, both their first election messages were
/// lost when the leader died, and the election took a second random timeout (the slow
/// failovers of BENCHMARKS §12).
fn closed_by_peer(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let open = matches!(stream.peek(&mut [0u8; 1]), Err(error) if is_timeout(&error));
    !open || stream.set_nonblocking(false).is_err()
}

fn write_frame(
    writer: &mut impl Write,
    message: &Message,
    frame: &mut Vec<u8>,
) -> std::io::Result<()> {
    frame.clear();
    message.write_to_vec(frame).map_err(std::io::Error::other)?;
    writer.write_all(&(frame.len() as u32).to_le_bytes())?;
    writer.write_all(frame)
}

/// A connection to `to` from address `from` (any port).
pub(crate) fn connect(from: std::net::IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(to);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(SEND_TIMEOUT))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;

    fn message(index: u64) -> Message {
        Message { to: 2, from: 1, index, ..Message::default() }
    }

    /// The next connection to `peer`, within `within`.
    fn accept_within(peer: &TcpListener, within: Duration) -> Option<TcpStream> {
        peer.set_nonblocking(true).expect("non-blocking");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok((stream, _)) = peer.accept() {
                stream.set_nonblocking(false).expect("blocking");
                return Some(stream);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn read_message(stream: &mut TcpStream) -> Message {
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("a timeout");
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).expect("a frame's length");
        let mut frame = vec![0u8; u32::from_le_bytes(length) as usize];
        stream.read_exact(&mut frame).expect("a frame");
        Message::parse_from_bytes(&frame).expect("a message")
    }

    /// A peer that closes its end (it restarted, or a link was cut and healed) loses no
    /// message: the next one, after the connection sat idle, goes on a new connection.
    #[test]
    fn the_first_message_after_the_peer_closed_the_connection_goes_on_a_new_one() {
        let peer = TcpListener::bind("127.0.0.1:0").expect("a port");
        let to = peer.local_addr().expect("bound");
        let (outbox, receiver) = bounded(16);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = std::thread::spawn({
            let stop = stop.clone();
            move || send_loop(IpAddr::V4(Ipv4Addr::LOCALHOST), to, receiver, stop)
        });
        outbox.send(message(1)).expect("queued");
        let mut first = accept_within(&peer, Duration::from_secs(5)).expect("a connection");
        assert_eq!(read_message(&mut first).index, 1);
        drop(first);
        std::thread::sleep(IDLE_CHECK_AFTER * 5);

        outbox.send(message(2)).expect("queued");
        let second = accept_within(&peer, Duration::from_secs(2));
        let mut second = second.expect("message 2 reconnects instead of vanishing");
        assert_eq!(read_message(&mut second).index, 2);

        stop.store(true, Ordering::Release);
        drop(outbox);
        sender.join().expect("the sender stops");
    }
}
