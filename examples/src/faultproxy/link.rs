//! One direction of one proxied connection: bytes read from one side are cut into
//! segments, each given the time it may be delivered (delay, jitter, a loss's
//! retransmission timeout, the bandwidth cap), and written to the other side in order.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::limits::{READ_CHUNK_BYTES, SEGMENTS_QUEUED_MAX, SEGMENT_BYTES};
use super::profile::{Loss, Profile};
use super::Control;
use crate::sample::Rng;

/// Which way the bytes go: the bandwidth cap differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

/// Bytes and the instant they may be delivered.
struct Segment {
    due: Instant,
    bytes: Vec<u8>,
}

/// Carries `from` to `to` until `from` ends (then shuts `to`'s writing down, so the
/// peer sees the end too) or either side fails.
pub async fn pump(
    from: ReadHalf<'_>,
    to: WriteHalf<'_>,
    direction: Direction,
    control: &Control,
    seed: u64,
) -> std::io::Result<()> {
    let (segments, queued) = mpsc::channel::<Segment>(SEGMENTS_QUEUED_MAX);
    let reading = read_segments(from, segments, control, Rng::new(seed));
    let writing = write_segments(to, queued, direction, control);
    let (read, written) = tokio::join!(reading, writing);
    read.and(written)
}

async fn read_segments(
    mut from: ReadHalf<'_>,
    segments: mpsc::Sender<Segment>,
    control: &Control,
    mut rng: Rng,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut last_due = Instant::now();
    loop {
        let read = from.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        let profile = control.profile();
        for bytes in chunk[..read].chunks(SEGMENT_BYTES) {
            let jitter = profile.jitter.mul_f64(rng.unit());
            // Never before an earlier segment: TCP delivers bytes in order, so a late one
            // holds up those behind it.
            let mut due = (Instant::now() + profile.rtt / 2 + jitter).max(last_due);
            if profile.loss > 0.0 && rng.unit() < profile.loss {
                control.counters.segments_lost.fetch_add(1, Ordering::Relaxed);
                match profile.loss_kind {
                    Loss::Retransmit => due += profile.retransmit_timeout(),
                    Loss::Discard => continue,
                }
            }
            last_due = due;
            let segment = Segment { due, bytes: bytes.to_vec() };
            if segments.send(segment).await.is_err() {
                // The writer stopped (its side failed): nothing more to carry.
                return Ok(());
            }
        }
    }
}

async fn write_segments(
    mut to: WriteHalf<'_>,
    mut queued: mpsc::Receiver<Segment>,
    direction: Direction,
    control: &Control,
) -> std::io::Result<()> {
    // When the link has sent everything written so far, at the bandwidth cap.
    let mut link_free = Instant::now();
    let counter = match direction {
        Direction::Up => &control.counters.bytes_up,
        Direction::Down => &control.counters.bytes_down,
    };
    while let Some(segment) = queued.recv().await {
        let cap = bytes_per_s(&control.profile(), direction);
        let start = segment.due.max(link_free);
        link_free = start + transmission(segment.bytes.len(), cap);
        // A segment is delivered once it has crossed the link entirely. tokio's timers
        // tick every millisecond, so a wait shorter than that rounds up; the cap's debt
        // still accumulates in `link_free`, so the long-run rate is exact.
        if link_free > Instant::now() {
            sleep_until(link_free).await;
        }
        to.write_all(&segment.bytes).await?;
        counter.fetch_add(segment.bytes.len() as u64, Ordering::Relaxed);
    }
    to.shutdown().await
}

fn bytes_per_s(profile: &Profile, direction: Direction) -> Option<u64> {
    match direction {
        Direction::Up => profile.up_bytes_per_s,
        Direction::Down => profile.down_bytes_per_s,
    }
}

/// How long `len` bytes take on a link of `cap` bytes a second.
fn transmission(len: usize, cap: Option<u64>) -> Duration {
    match cap {
        Some(cap) => Duration::from_secs_f64(len as f64 / cap as f64),
        None => Duration::ZERO,
    }
}
