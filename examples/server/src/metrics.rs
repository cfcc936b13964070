//! `--metrics-port`: `GET /metrics` in the Prometheus (OpenMetrics) text format (SPEC §15).
//!
//! Pull, not push: a scrape reads what the engine and the server already count (the
//! `STATS` numbers, the shards' queues, the budget) and renders them, so keeping metrics
//! costs the command path nothing. The families are built afresh on every scrape with
//! `prometheus-client`, which owns the format (names, `_total`, units, escaping, `# EOF`).
//! Money is in minor units (`_minor`), kept as a float gauge where it can pass `u64`.
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
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

use plafond::{Health, Reason, RegionCounters, Stats};

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
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new().route("/metrics", get(scrape)).with_state(shared);
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
    let gauges = shared.server_gauges();
    let engine = shared.engine.clone();
    let gathered = tokio::task::spawn_blocking(move || match engine.health() {
        Health::Ok => engine.stats().map(Some).map_err(|e| e.to_string()),
        Health::Failed { .. } => Ok(None),
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

/// An unlabelled counter at `count`.
fn total(registry: &mut Registry, name: &str, help: &str, count: u64) {
    let counter: Counter = Counter::default();
    counter.inc_by(count);
    registry.register(name, help, counter);
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
    for (name, region_stats) in &stats.regions {
        let of = labels(&[("region", name)]);
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

    let shard_accounts = gauge(registry, "shard_accounts", "Accounts a shard holds");
    let queue = gauge(registry, "shard_queue_depth", "Submissions waiting in a shard's mailbox");
    let commands = counter(registry, "shard_commands", "Commands a shard decided");
    let batches = counter(registry, "shard_batches", "Batches a shard decided");
    let inline = counter(registry, "shard_inline_batches", "Batches decided on the submitter");
    let busy = gauge_with_unit(
        registry,
        "shard_busy",
        "Time a shard spent deciding since it started",
        Unit::Seconds,
    );
    let service = gauge_with_unit(
        registry,
        "shard_service_time",
        "A batch's service time on its shard, by quantile (recent batches)",
        Unit::Seconds,
    );
    for (index, shard) in stats.shards.iter().enumerate() {
        let id = index.to_string();
        let of = labels(&[("shard", &id)]);
        shard_accounts.get_or_create(&of).set(shard.accounts as f64);
        queue.get_or_create(&of).set(shard.queue_depth as f64);
        commands.get_or_create(&of).inc_by(shard.commands);
        batches.get_or_create(&of).inc_by(shard.batches);
        inline.get_or_create(&of).inc_by(shard.inline_batches);
        busy.get_or_create(&of).set(shard.busy_ns as f64 / 1e9);
        for (quantile, micros) in [
            ("0.5", shard.service_us_p50),
            ("0.99", shard.service_us_p99),
            ("0.999", shard.service_us_p999),
        ] {
            let of = labels(&[("shard", &id), ("quantile", quantile)]);
            service.get_or_create(&of).set(micros as f64 / 1e6);
        }
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
    total(registry, "checkpoints_written", "Checkpoints written since start", checkpoint.written);
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
        total(registry, "clock_jumps_refused", help, guard.jumps_refused);
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
    total(registry, "submissions", "Combined submissions sent to the engine", submissions);
    total(registry, "submitted_requests", "Requests the submissions carried", requests);
}

/// Where the metrics are served, for the start-up line.
pub fn describe(addr: SocketAddr) -> String {
    format!("metrics on http://{addr}/metrics")
}
