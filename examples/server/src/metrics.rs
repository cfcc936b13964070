//! `--metrics-port`: `GET /metrics` in the Prometheus (OpenMetrics) text format (SPEC §15),
//! and beside it the live page ([`crate::page`]).
//!
//! Pull, not push: a scrape reads what the engine and the server already count (the
//! `STATS` numbers, the shards' queues, the budget, the power-of-two histograms the shards
//! and the writer keep where they measure) and renders them, so keeping metrics costs the
//! command path nothing it did not already pay. The families are built afresh on every
//! scrape with `prometheus-client`, which owns the format (names, `_total`, units,
//! escaping, `# EOF`). Money is in minor units (`_minor`), kept as a float gauge where it
//! can pass `u64`.
//!
//! While the storage has failed, only `plafond_storage_healthy 0` is served, as `STATS`
//! shows no numbers then: what is in memory was not all made durable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit};

use plafond::{Buckets, CommandCounts, Health, Kind, Reason, RegionCounters, Stats, StorageStats};

use crate::limits::HTTP_CUTS_IN_FLIGHT_MAX;
use crate::Shared;

/// What Prometheus is told the body is.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label pairs of one sample.
type Labels = Vec<(&'static str, String)>;
type CounterFamily = Family<Labels, Counter>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
type GaugeFamily = Family<Labels, FloatGauge>;

/// What the server itself counts, beside the engine's [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerGauges {
    /// Connections holding a slot, authenticated and anonymous.
    pub connections: (usize, usize),
    /// Commands queued from the shared pool (beyond the connections' floors).
    pub queued_commands: usize,
    /// Bytes in every connection's buffers.
    pub buffered_bytes: usize,
    /// Combined submissions sent to the engine, and the requests they carried.
    pub submissions: (u64, u64),
    /// `XREAD BLOCK`s waiting for entries.
    pub stream_blocked_readers: usize,
    /// A replica's role, term and progress (SPEC §14); `None` on a single node.
    pub replica: Option<plafond::RoleView>,
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new().route("/metrics", get(scrape)).merge(crate::page::routes());
    let app = app.with_state(shared);
    let stopped = async move {
        // Closed (the server is gone) counts as stopped too.
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        eprintln!("server: the metrics listener stopped: {error}");
    }
}

/// One scrape: the engine's numbers are gathered off the async threads (a cut of every
/// shard), then rendered.
async fn scrape(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    let Some(permit) = cut_permit(&shared) else {
        return busy();
    };
    let gauges = shared.server_gauges();
    let engine = shared.engine.clone();
    let gathered = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        match engine.health() {
            Health::Ok => engine.stats().map(Some).map_err(|e| e.to_string()),
            Health::Failed { .. } => Ok(None),
        }
    })
    .await;
    let stats = match gathered {
        Ok(Ok(stats)) => stats,
        Ok(Err(error)) => return (StatusCode::SERVICE_UNAVAILABLE, error).into_response(),
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    };
    match render(stats.as_ref(), &gauges, SystemTime::now()) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// One of the [`HTTP_CUTS_IN_FLIGHT_MAX`] requests that may take a cut at once, or `None`.
pub(crate) fn cut_permit(shared: &Shared) -> Option<OwnedSemaphorePermit> {
    shared.http_cuts.clone().try_acquire_owned().ok()
}

/// The answer past [`HTTP_CUTS_IN_FLIGHT_MAX`].
pub(crate) fn busy() -> Response {
    let text = format!("busy: {HTTP_CUTS_IN_FLIGHT_MAX} requests are being answered; retry");
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], text).into_response()
}

/// The exposition of `stats` (none while the storage has failed) and the server's gauges.
pub fn render(
    stats: Option<&Stats>,
    server: &ServerGauges,
    now: SystemTime,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("plafond");
    let healthy = if stats.is_some() { 1.0 } else { 0.0 };
    single(&mut registry, "storage_healthy", "1 while every write has succeeded", None, healthy);
    if let Some(stats) = stats {
        engine_families(&mut registry, stats, now);
        server_families(&mut registry, server);
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> CounterFamily {
    let family = CounterFamily::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> GaugeFamily {
    let family = GaugeFamily::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_with_unit(registry: &mut Registry, name: &str, help: &str, unit: Unit) -> GaugeFamily {
    let family = GaugeFamily::default();
    registry.register_with_unit(name, help, unit, family.clone());
    family
}

/// An unlabelled gauge holding `value`, with `unit` appended to its name if given.
fn single(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: f64) {
    let gauge = FloatGauge::default();
    gauge.set(value);
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, gauge),
        None => registry.register(name, help, gauge),
    }
}

/// An unlabelled counter at `count`, with `unit` appended to its name if given.
fn total(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, count: u64) {
    let counter: Counter = Counter::default();
    counter.inc_by(count);
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, counter),
        None => registry.register(name, help, counter),
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(name, value)| (*name, value.to_string())).collect()
}

fn engine_families(registry: &mut Registry, stats: &Stats, now: SystemTime) {
    let profiles = counter(registry, "profiles_opened", "Profiles opened, by region");
    let accounts = counter(registry, "accounts_opened", "Accounts opened, by region and kind");
    let approved = counter(registry, "payments_approved", "Card payments approved, by region");
    let approved_minor =
        gauge(registry, "payments_approved_minor", "Amount of the payments approved (minor units)");
    let declined = counter(registry, "declines", "Declined commands, by region and reason");
    let balances =
        gauge(registry, "balances_minor", "Sum of the balances of the region (minor units)");
    let near = gauge(registry, "cards_near_ceiling", "Cards above 90 % of their ceiling");
    let rolled = gauge(registry, "rolled_business_day", "Last business day rolled, by region");
    let region = |name: &str, counters: &RegionCounters| {
        let of = labels(&[("region", name)]);
        profiles.get_or_create(&of).inc_by(counters.profiles);
        for (kind, count) in
            [("checking", counters.checking_accounts), ("savings", counters.savings_accounts)]
        {
            accounts.get_or_create(&labels(&[("region", name), ("kind", kind)])).inc_by(count);
        }
        approved.get_or_create(&of).inc_by(counters.payments_approved);
        approved_minor.get_or_create(&of).set(counters.payments_approved_minor as f64);
        balances.get_or_create(&of).set(counters.balances_minor as f64);
        for reason in Reason::ALL.into_iter().filter(|reason| reason.counted()) {
            let count = counters.declined.get(reason.index()).copied().unwrap_or(0);
            let of = labels(&[("region", name), ("reason", reason.as_str())]);
            declined.get_or_create(&of).inc_by(count);
        }
    };
    for (name, region_stats) in &stats.regions {
        region(name, &region_stats.counters);
    }
    region("unattributed", &stats.unattributed);
    let held = gauge(registry, "held_minor", "Money held by open card holds (§12, minor units)");
    let open_holds = gauge(registry, "open_holds", "Open card holds, by region");
    let expiring = gauge(registry, "holds_expiring", "Open holds that expire at the next roll");
    for (name, region_stats) in &stats.regions {
        let of = labels(&[("region", name)]);
        held.get_or_create(&of).set(region_stats.held_minor as f64);
        open_holds.get_or_create(&of).set(region_stats.open_holds as f64);
        expiring.get_or_create(&of).set(region_stats.holds_expiring as f64);
        near.get_or_create(&of).set(region_stats.cards_near_ceiling as f64);
        if let Some(day) = region_stats.rolled_day {
            rolled.get_or_create(&of).set(f64::from(day));
        }
    }

    let in_flight = stats.audit.in_flight_minor as f64;
    single(
        registry,
        "in_flight_minor",
        "Money in cross-shard transfers in flight",
        None,
        in_flight,
    );
    let holds = if stats.audit.holds() { 1.0 } else { 0.0 };
    single(registry, "conservation_holds", "1 while the money adds up (§2)", None, holds);

    shard_families(registry, stats);
    command_families(registry, &stats.commands);
    let epochs = counter(registry, "epochs_completed", "Epochs completed since start, by region");
    for ((name, _), completed) in stats.regions.iter().zip(&stats.epochs_completed) {
        epochs.get_or_create(&labels(&[("region", name)])).inc_by(*completed);
    }
    if let Some(storage) = &stats.storage {
        storage_families(registry, storage);
    }

    let remembered = stats.remembered_in_memory as f64;
    single(
        registry,
        "remembered_ids_in_memory",
        "Command-id records held in memory",
        None,
        remembered,
    );
    let claimed = stats.ids_in_flight as f64;
    single(registry, "ids_in_flight", "Command ids claimed by batches in flight", None, claimed);

    let checkpoint = &stats.checkpoint;
    let help = "Checkpoints written since start";
    total(registry, "checkpoints_written", help, None, checkpoint.written);
    if let Some(completed_ms) = checkpoint.completed_ms {
        let age_s = (crate::stats::unix_ms(now) as f64 - completed_ms as f64) / 1e3;
        let seconds = Some(Unit::Seconds);
        single(
            registry,
            "checkpoint_age",
            "Time since the newest checkpoint completed",
            seconds.clone(),
            age_s.max(0.0),
        );
        let duration = checkpoint.duration.as_secs_f64();
        single(
            registry,
            "checkpoint_duration",
            "How long the newest checkpoint took",
            seconds.clone(),
            duration,
        );
        let bytes = checkpoint.bytes as f64;
        single(
            registry,
            "checkpoint_size",
            "Size of the newest checkpoint",
            Some(Unit::Bytes),
            bytes,
        );
        let step = checkpoint.longest_step.as_secs_f64();
        let help = "The longest capture step of the newest checkpoint (wall time)";
        single(registry, "checkpoint_longest_step", help, seconds, step);
    }
    let failing = if checkpoint.last_error.is_some() { 1.0 } else { 0.0 };
    single(registry, "checkpoint_failing", "1 while the last checkpoint failed", None, failing);

    if let Some(guard) = &stats.clock_guard {
        let help = "Host clock jumps the time guard refused";
        total(registry, "clock_jumps_refused", help, None, guard.jumps_refused);
    }
}

fn shard_families(registry: &mut Registry, stats: &Stats) {
    let shard_accounts = gauge(registry, "shard_accounts", "Accounts a shard holds");
    let queue = gauge(registry, "shard_queue_depth", "Submissions waiting in a shard's mailbox");
    let help = "Mail waiting in a shard's internal mailbox (transfer legs, epoch chunks, cuts)";
    let internal = gauge(registry, "shard_internal_queue_depth", help);
    let inline = counter(registry, "shard_inline_batches", "Batches decided on the submitter");
    let mut service = Histograms::default();
    let mut sizes = Histograms::default();
    for (index, shard) in stats.shards.iter().enumerate() {
        let id = index.to_string();
        let of = labels(&[("shard", &id)]);
        shard_accounts.get_or_create(&of).set(shard.accounts as f64);
        queue.get_or_create(&of).set(shard.queue_depth as f64);
        internal.get_or_create(&of).set(shard.internal_depth as f64);
        inline.get_or_create(&of).inc_by(shard.inline_batches);
        service.0.push((of.clone(), Exported::seconds(&shard.service)));
        sizes.0.push((of, Exported::counts(&shard.batch_commands)));
    }
    let help = "A batch's service time on its shard, from its first command to its flush";
    registry.register_with_unit("shard_service_time", help, Unit::Seconds, service);
    let help = "Client commands per batch (sum: commands decided; count: batches)";
    registry.register("shard_batch_commands", help, sizes);
}

/// Answers by kind (`done` or `declined`), and declines by kind and reason where any.
fn command_families(registry: &mut Registry, commands: &CommandCounts) {
    let help = "Commands answered, by kind and outcome (retries answered from their record \
                included)";
    let answered = counter(registry, "commands", help);
    let help = "Commands declined, by kind and reason (a pair appears once it occurs)";
    let declined = counter(registry, "command_declines", help);
    for kind in Kind::ALL {
        let of = |outcome| labels(&[("kind", kind.as_str()), ("outcome", outcome)]);
        answered.get_or_create(&of("done")).inc_by(commands.done(kind));
        let mut declines = 0;
        for reason in Reason::ALL {
            let count = commands.declined(kind, reason);
            if count > 0 {
                let of = labels(&[("kind", kind.as_str()), ("reason", reason.as_str())]);
                declined.get_or_create(&of).inc_by(count);
                declines += count;
            }
        }
        answered.get_or_create(&of("declined")).inc_by(declines);
    }
}

fn storage_families(registry: &mut Registry, storage: &StorageStats) {
    let seconds = |buckets: &Buckets| Histograms(vec![(Vec::new(), Exported::seconds(buckets))]);
    let help = "A group commit, from gathering the shards' batches to releasing their replies";
    let group_commit = seconds(&storage.group_commit);
    registry.register_with_unit("group_commit", help, Unit::Seconds, group_commit);
    let help = "Shard batches per group commit (one RocksDB write, one fsync)";
    let sizes = Histograms(vec![(Vec::new(), Exported::counts(&storage.group_batches))]);
    registry.register("group_commit_batches", help, sizes);
    let help = "A wait for the WAL fsync: in sync the group's write (append and fsync), in \
                async the syncer's fsync";
    registry.register_with_unit("wal_fsync", help, Unit::Seconds, seconds(&storage.wal_sync));
    let bytes = Some(Unit::Bytes);
    let help = "Changelog bytes written since start";
    total(registry, "log_written", help, bytes.clone(), storage.log_written_bytes);
    let help = "Archive segment bytes written since start (log retention)";
    total(registry, "archive_written", help, bytes, storage.archived_bytes);
    let tables = gauge_with_unit(
        registry,
        "store_tables",
        "Live RocksDB table files, by column family",
        Unit::Bytes,
    );
    let sizes = &storage.sizes;
    tables.get_or_create(&labels(&[("family", "log")])).set(sizes.log_table_bytes as f64);
    tables.get_or_create(&labels(&[("family", "ids")])).set(sizes.ids_table_bytes as f64);
    let help = "Command-id records on disk (RocksDB's estimate)";
    single(registry, "remembered_ids_on_disk", help, None, sizes.ids_estimate as f64);
}

/// Histograms counted already (the shards' and the writer's power-of-two buckets), one
/// per label set; an empty label set is the family's one unlabelled histogram.
#[derive(Debug, Default)]
struct Histograms(Vec<(Labels, Exported)>);

/// One histogram as the format wants it: per-bucket counts by upper bound, the last +Inf.
#[derive(Debug)]
struct Exported {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Exported {
    fn with(buckets: &Buckets, sum: f64, bound: impl Fn(usize) -> f64) -> Exported {
        let last = buckets.counts.len().saturating_sub(1);
        let buckets = buckets.counts.iter().enumerate().map(|(index, &count)| {
            (if index == last { f64::INFINITY } else { bound(index) }, count)
        });
        let buckets: Vec<(f64, u64)> = buckets.collect();
        Exported { sum, count: buckets.iter().map(|(_, count)| count).sum(), buckets }
    }

    /// Durations bucketed by power-of-two µs (below `2^i` µs), summed in ns.
    fn seconds(buckets: &Buckets) -> Exported {
        let sum = buckets.sum as f64 / 1e9;
        Exported::with(buckets, sum, |index| (1u64 << index) as f64 / 1e6)
    }

    /// Whole numbers below `2^i`: at most `2^i - 1`.
    fn counts(buckets: &Buckets) -> Exported {
        Exported::with(buckets, buckets.sum as f64, |index| ((1u64 << index) - 1) as f64)
    }

    fn encode(&self, encoder: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
}

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, histogram) in &self.0 {
            if labels.is_empty() {
                histogram.encode(&mut encoder)?;
            } else {
                histogram.encode(&mut encoder.encode_family(labels)?)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn server_families(registry: &mut Registry, server: &ServerGauges) {
    let connections = gauge(registry, "connections", "Connections holding a slot");
    let (authenticated, anonymous) = server.connections;
    connections.get_or_create(&labels(&[("auth", "yes")])).set(authenticated as f64);
    connections.get_or_create(&labels(&[("auth", "no")])).set(anonymous as f64);
    let queued = server.queued_commands as f64;
    single(registry, "queued_commands", "Commands queued beyond the floors", None, queued);
    let buffered = server.buffered_bytes as f64;
    single(registry, "buffered", "Bytes in connection buffers", Some(Unit::Bytes), buffered);
    let (submissions, requests) = server.submissions;
    let help = "Combined submissions sent to the engine";
    total(registry, "submissions", help, None, submissions);
    total(registry, "submitted_requests", "Requests the submissions carried", None, requests);
    let blocked = server.stream_blocked_readers as f64;
    let help = "XREAD BLOCKs waiting for entries";
    single(registry, "stream_blocked_readers", help, None, blocked);
    if let Some(view) = &server.replica {
        let role = gauge(registry, "replication_role", "1 for this replica's Raft role");
        for name in [plafond::Role::Leader, plafond::Role::Follower, plafond::Role::Candidate] {
            let value = if name == view.role { 1.0 } else { 0.0 };
            role.get_or_create(&labels(&[("role", name.as_str())])).set(value);
        }
        single(registry, "replication_term", "The replica's Raft term", None, view.term as f64);
        let applied = view.applied as f64;
        single(registry, "replication_applied_index", "Last Raft entry applied", None, applied);
        let lag = view.commit.saturating_sub(view.applied) as f64;
        single(registry, "replication_lag_entries", "Committed entries not yet applied", None, lag);
        let help = "Raft snapshots this replica installed (it was behind the leader's log)";
        total(registry, "replication_snapshots_installed", help, None, view.snapshots_installed);
        let help = "Raft snapshots offered to followers behind this leader's log";
        total(registry, "replication_snapshots_sent", help, None, view.snapshots_sent);
    }
}

/// Where the metrics are served, for the start-up line.
pub fn describe(addr: SocketAddr) -> String {
    format!("metrics on http://{addr}/metrics")
}
