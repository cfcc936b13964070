//! Every bound of the fault proxy, named (docs/BENCHMARKS.md §network profiles uses them).

use std::time::Duration;

/// The most bytes one read of a connection takes before it is cut into segments.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// The size of a "segment": the unit a loss is drawn for and a bandwidth cap is paid by
/// (an Ethernet MSS, so a loss rate reads as a per-packet rate).
pub const SEGMENT_BYTES: usize = 1460;
/// Segments queued per direction of a connection, waiting for their delivery time. A full
/// queue stops the proxy reading that side, so TCP's own flow control pushes back on the
/// sender: the proxy holds at most this × `SEGMENT_BYTES` per direction.
pub const SEGMENTS_QUEUED_MAX: usize = 2048;
/// Connections proxied at once; more are refused (closed on accept).
pub const CONNECTIONS_MAX: usize = 4096;
/// How long the proxy waits for the upstream to accept a connection.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The least retransmission timeout a lost segment is delayed by (Linux's `TCP_RTO_MIN`).
pub const RETRANSMIT_TIMEOUT_MIN: Duration = Duration::from_millis(200);
/// The largest delay, jitter or retransmission timeout a profile may ask for.
pub const DELAY_MAX: Duration = Duration::from_secs(60);
/// The longest mean lifetime of a connection under random cuts.
pub const CUT_MEAN_MAX: Duration = Duration::from_secs(24 * 3600);
/// The bytes of one control command line (the binary's control socket).
pub const CONTROL_LINE_BYTES_MAX: usize = 256;
/// How often the accept loop checks whether it should stop.
pub const STOP_POLL: Duration = Duration::from_millis(50);

const _: () = assert!(SEGMENT_BYTES <= READ_CHUNK_BYTES);
const _: () = assert!(RETRANSMIT_TIMEOUT_MIN.as_millis() < DELAY_MAX.as_millis());
