//! The pretty dump (SPEC §10): [`plafond::Stats`] as a table for people and as JSON for
//! machines.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use plafond::{
    Buckets, ClockGuardReport, ClockJump, Engine, EngineError, Health, Kind, Reason, RegionStats,
    Stats, StorageStats,
};

/// Remembers the previous sample, so commands/s covers the time since the last `STATS`
/// (or since start), which is what an operator polling it wants.
#[derive(Debug)]
pub struct Sampler {
    last: Mutex<(Instant, Vec<u64>)>,
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler { last: Mutex::new((Instant::now(), Vec::new())) }
    }
}

impl Sampler {
    /// Commands per second of each shard since the previous call.
    pub fn rates(&self, stats: &Stats) -> Vec<f64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let rates = stats
            .shards
            .iter()
            .enumerate()
            .map(|(shard, s)| {
                let before = last.1.get(shard).copied().unwrap_or(0);
                s.commands.saturating_sub(before) as f64 / secs
            })
            .collect();
        *last = (now, stats.shards.iter().map(|s| s.commands).collect());
        rates
    }
}

/// What `STATS` (or `STATS JSON`) answers now: the table or the JSON, or the health alone
/// once the storage failed. Takes a consistent cut of every shard: not for an async worker.
pub fn render(engine: &Engine, sampler: &Sampler, json: bool) -> Result<String, EngineError> {
    let health = engine.health();
    if health != Health::Ok {
        return Ok(failed(&health, json));
    }
    let stats = engine.stats()?;
    let rates = sampler.rates(&stats);
    if !json {
        return Ok(table(&stats, &rates, &health));
    }
    // The digests cost a pass over every shard's state: only the JSON, which the replicas'
    // checkers read, shows them.
    let replica = Replica {
        view: engine.replication().map(|status| status.view()),
        digests: engine.digests()?,
    };
    Ok(self::json(&stats, &rates, &health, &replica))
}

/// What `STATS JSON` adds about replication (SPEC §14).
pub struct Replica {
    /// The replica's role, term and leader; `None` on a single node.
    pub view: Option<plafond::RoleView>,
    /// Each shard's state digest.
    pub digests: Vec<u64>,
}

#[derive(Serialize)]
struct ReplicationJson {
    node_id: u64,
    role: &'static str,
    term: u64,
    leader: Option<String>,
    serving: bool,
    applied_index: u64,
    commit_index: u64,
    snapshots_installed: u64,
    snapshots_sent: u64,
}

/// The civil date of a day number (days since 1970-01-01), e.g. `2027-01-04`: the
/// calendar's own conversion, so the dump and the business days cannot disagree.
pub fn civil_date(days: i32) -> String {
    plafond::internals::calendar::date_of_day(days).to_string()
}

fn rolled(stats: &RegionStats) -> String {
    stats.rolled_day.map_or_else(|| "none".into(), civil_date)
}

/// Milliseconds since 1970 of `time` (0 before it).
pub(crate) fn unix_ms(time: std::time::SystemTime) -> u128 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis())
}

/// One line for people: `health: ok`, or what failed, since when, and what to do.
pub fn health_line(health: &Health) -> String {
    match health {
        Health::Ok => "health: ok".into(),
        Health::Failed { since, reason } => format!(
            "health: STORAGE FAILED at unix ms {}: {reason}; nothing more is acknowledged \
             and the numbers in memory were not all made durable, so none are shown; free \
             space or fix the disk, then restart (acknowledged outcomes are kept)",
            unix_ms(*since)
        ),
    }
}

/// `{"state":"ok"}` or `{"state":"failed","since_unix_ms":N,"reason":"..."}`.
#[derive(Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum HealthJson<'a> {
    Ok,
    Failed { since_unix_ms: u128, reason: &'a str },
}

impl<'a> HealthJson<'a> {
    fn of(health: &'a Health) -> HealthJson<'a> {
        match health {
            Health::Ok => HealthJson::Ok,
            Health::Failed { since, reason } => {
                HealthJson::Failed { since_unix_ms: unix_ms(*since), reason }
            }
        }
    }
}

/// What `STATS JSON` answers once the storage failed: the health alone.
#[derive(Serialize)]
struct FailedJson<'a> {
    health: HealthJson<'a>,
}

/// What `STATS` answers once the storage failed: the health alone, since the numbers
/// in memory include outcomes that were never made durable.
pub fn failed(health: &Health, json: bool) -> String {
    if json {
        to_json(&FailedJson { health: HealthJson::of(health) })
    } else {
        health_line(health) + "\n"
    }
}

/// The table for people, under the health line.
pub fn table(stats: &Stats, rates: &[f64], health: &Health) -> String {
    let mut out = health_line(health) + "\n\n";
    let rows: Vec<(&str, &RegionStats)> = stats
        .regions
        .iter()
        .map(|(name, s)| (name.as_str(), s))
        .chain([("TOTAL", &stats.total)])
        .collect();
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>10} {:>10} {:>20} {:>12} {:>20} {:>10} {:>12} {:>16} {:>10} {:>9}",
        "region",
        "profiles",
        "checking",
        "savings",
        "balances",
        "approved",
        "approved_volume",
        "near_ceil",
        "rolled_day",
        "held",
        "open_holds",
        "expiring"
    );
    for (name, s) in &rows {
        let c = &s.counters;
        let _ = writeln!(
            out,
            "{:<12} {:>10} {:>10} {:>10} {:>20} {:>12} {:>20} {:>10} {:>12} {:>16} {:>10} {:>9}",
            name,
            c.profiles,
            c.checking_accounts,
            c.savings_accounts,
            c.balances_minor,
            c.payments_approved,
            c.payments_approved_minor,
            s.cards_near_ceiling,
            rolled(s),
            s.held_minor,
            s.open_holds,
            s.holds_expiring
        );
    }
    let _ = writeln!(out, "\ndeclined by reason (count / volume)");
    let _ = write!(out, "{:<22}", "reason");
    for (name, _) in &rows {
        let _ = write!(out, " {name:>24}");
    }
    let _ = writeln!(out);
    for reason in Reason::ALL {
        let _ = write!(out, "{:<22}", reason.as_str());
        for (_, s) in &rows {
            let i = reason.index();
            let cell = format!("{} / {}", s.counters.declined[i], s.counters.declined_minor[i]);
            let _ = write!(out, " {cell:>24}");
        }
        let _ = writeln!(out);
    }
    let audit = &stats.audit;
    let _ = writeln!(
        out,
        "\nin flight {}   held {}   conservation {} (balances + in flight {} = owed {}: \
         initial {} + deposits {} + interest {} + refunds {} - card payments {} - captures {})",
        audit.in_flight_minor,
        audit.held_minor,
        if audit.holds() { "ok" } else { "BROKEN" },
        audit.present_minor(),
        audit.owed_minor(),
        audit.initial_deposits_minor,
        audit.deposits_minor,
        audit.interest_minor,
        audit.refunds_minor,
        audit.card_payments_minor,
        audit.captures_minor
    );
    let _ = writeln!(
        out,
        "\n{:<6} {:>10} {:>8} {:>14} {:>12} {:>12} {:>9} {:>10} {:>22}",
        "shard",
        "accounts",
        "queue",
        "commands",
        "commands/s",
        "mean_batch",
        "inline_%",
        "busy_s",
        "service_us p50/99/999"
    );
    for (shard, s) in stats.shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>8} {:>14} {:>12.0} {:>12.1} {:>9.1} {:>10.3} {:>22}",
            shard,
            s.accounts,
            s.queue_depth,
            s.commands,
            rates.get(shard).copied().unwrap_or(0.0),
            per_batch(s.commands, s.batches),
            100.0 * per_batch(s.inline_batches, s.batches),
            s.busy_ns as f64 / 1e9,
            format!("{}/{}/{}", s.service_us_p50, s.service_us_p99, s.service_us_p999)
        );
    }
    let c = &stats.checkpoint;
    let _ = writeln!(
        out,
        "\nremembered ids in memory {} (the rest on disk), ids in flight {}\n\
         checkpoints written {}, last {} ({} bytes, {:.3} s, longest capture step {} us, \
         {} us of CPU){}",
        stats.remembered_in_memory,
        stats.ids_in_flight,
        c.written,
        c.path.as_ref().map_or("none".to_owned(), |path| path.display().to_string()),
        c.bytes,
        c.duration.as_secs_f64(),
        c.longest_step.as_micros(),
        c.longest_step_cpu.as_micros(),
        c.last_error.as_ref().map_or(String::new(), |error| format!(", last failure: {error}"))
    );
    let _ = writeln!(out, "{}", clock_guard_line(stats.clock_guard.as_ref()));
    out
}

/// One line for people on the guard against jumps of the host's clock: off (a manual
/// clock), on with how many jumps it refused, or the jump it refuses now and what to do.
pub fn clock_guard_line(guard: Option<&ClockGuardReport>) -> String {
    let Some(guard) = guard else {
        return "clock guard: off (the clock is not the guarded system clock)".into();
    };
    let refused = guard.jumps_refused;
    match &guard.refused {
        None => format!("clock guard: on, jumps refused {refused}, none refused now"),
        Some(jump) => format!(
            "clock guard: REFUSING A JUMP: the host's clock is {} ms ahead (host {} ms, the              engine goes by {} ms); jumps refused {refused}; fix the host's clock, or              CLOCK.ACCEPT to take its time",
            jump.ahead_ms, jump.host_ms, jump.guarded_ms
        ),
    }
}

/// `count` per batch, 0 before the first batch: the mean batch size, or (× 100) the share
/// of batches a submitter decided on its own thread.
fn per_batch(count: u64, batches: u64) -> f64 {
    if batches == 0 {
        0.0
    } else {
        count as f64 / batches as f64
    }
}

/// A map whose keys keep the order they are given in (regions by id, reasons as
/// `Reason::ALL` lists them), where a `BTreeMap` would sort them.
struct Ordered<K, V>(Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Ordered<K, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Serialize)]
struct CountVolume {
    count: u64,
    volume_minor: u128,
}

/// Keyed by the account kinds as the wire spells them.
#[derive(Serialize)]
struct AccountsJson {
    #[serde(rename = "CHECKING")]
    checking: u64,
    #[serde(rename = "SAVINGS")]
    savings: u64,
}

#[derive(Serialize)]
struct RegionJson {
    profiles: u64,
    accounts: AccountsJson,
    balances_minor: u128,
    payments_approved: CountVolume,
    declined: Ordered<&'static str, CountVolume>,
    cards_near_ceiling: u64,
    rolled_day: Option<String>,
    /// What the open holds hold (§12).
    held_minor: u128,
    open_holds: u64,
    /// Open holds expiring at the region's next roll.
    holds_expiring: u64,
}

impl RegionJson {
    fn of(s: &RegionStats) -> RegionJson {
        let c = &s.counters;
        let declined = Reason::ALL
            .iter()
            .map(|reason| {
                let i = reason.index();
                let figures =
                    CountVolume { count: c.declined[i], volume_minor: c.declined_minor[i] };
                (reason.as_str(), figures)
            })
            .collect();
        RegionJson {
            profiles: c.profiles,
            accounts: AccountsJson { checking: c.checking_accounts, savings: c.savings_accounts },
            balances_minor: c.balances_minor,
            payments_approved: CountVolume {
                count: c.payments_approved,
                volume_minor: c.payments_approved_minor,
            },
            declined: Ordered(declined),
            cards_near_ceiling: s.cards_near_ceiling,
            rolled_day: s.rolled_day.map(civil_date),
            held_minor: s.held_minor,
            open_holds: s.open_holds,
            holds_expiring: s.holds_expiring,
        }
    }
}

#[derive(Serialize)]
struct AuditJson {
    balances_minor: u128,
    in_flight_minor: i128,
    initial_deposits_minor: u128,
    deposits_minor: u128,
    interest_minor: u128,
    card_payments_minor: u128,
    refunds_minor: u128,
    captures_minor: u128,
    held_minor: u128,
    holds: bool,
}

#[derive(Serialize)]
struct ShardJson<'a> {
    shard: usize,
    accounts: u64,
    queue_depth: usize,
    internal_depth: usize,
    commands: u64,
    batches: u64,
    inline_batches: u64,
    commands_per_s: f64,
    mean_batch: f64,
    busy_ns: u64,
    service_us_p50: u64,
    service_us_p99: u64,
    service_us_p999: u64,
    /// Batches by service time: entry `i` counts those below `2^i` µs (the last, longer
    /// too), so a reader can take quantiles of any interval from two samples.
    service_us_buckets: &'a [u64],
    /// The shard's state digest (16 hex digits): equal on every replica once healed.
    digest: Option<String>,
}

/// One kind's answers.
#[derive(Serialize)]
struct AnsweredJson {
    done: u64,
    declined: u64,
}

/// The store and its group-commit writer (a durable engine only).
#[derive(Serialize)]
struct StorageJson {
    log_written_bytes: u64,
    archived_bytes: u64,
    log_table_bytes: u64,
    ids_table_bytes: u64,
    remembered_on_disk_estimate: u64,
    group_commits: u64,
    mean_group_batches: f64,
    group_commit_us_p50: u64,
    group_commit_us_p99: u64,
    wal_fsync_us_p50: u64,
    wal_fsync_us_p99: u64,
}

impl StorageJson {
    fn of(storage: &StorageStats) -> StorageJson {
        let groups = &storage.group_batches;
        let us = |buckets: &Buckets, quantile| buckets.quantile_bound(quantile);
        StorageJson {
            log_written_bytes: storage.log_written_bytes,
            archived_bytes: storage.archived_bytes,
            log_table_bytes: storage.sizes.log_table_bytes,
            ids_table_bytes: storage.sizes.ids_table_bytes,
            remembered_on_disk_estimate: storage.sizes.ids_estimate,
            group_commits: groups.count(),
            mean_group_batches: rounded(per_batch(groups.sum, groups.count()), 2),
            group_commit_us_p50: us(&storage.group_commit, 0.5),
            group_commit_us_p99: us(&storage.group_commit, 0.99),
            wal_fsync_us_p50: us(&storage.wal_sync, 0.5),
            wal_fsync_us_p99: us(&storage.wal_sync, 0.99),
        }
    }
}

#[derive(Serialize)]
struct CheckpointJson<'a> {
    written: u64,
    completed_ms: Option<i64>,
    seconds: f64,
    bytes: u64,
    longest_step_us: u128,
    longest_step_cpu_us: u128,
    error: Option<&'a str>,
}

/// A refused jump of the host's clock, in Unix ms.
#[derive(Serialize)]
struct ClockJumpJson {
    host_ms: i64,
    guarded_ms: i64,
    ahead_ms: i64,
}

/// `null` when the clock is not guarded (a manual clock).
#[derive(Serialize)]
struct ClockGuardJson {
    jumps_refused: u64,
    /// The jump refused now, or `null`.
    refused: Option<ClockJumpJson>,
}

impl ClockGuardJson {
    fn of(guard: &ClockGuardReport) -> ClockGuardJson {
        let jump = |jump: &ClockJump| ClockJumpJson {
            host_ms: jump.host_ms,
            guarded_ms: jump.guarded_ms,
            ahead_ms: jump.ahead_ms,
        };
        ClockGuardJson {
            jumps_refused: guard.jumps_refused,
            refused: guard.refused.as_ref().map(jump),
        }
    }
}

/// The JSON for machines.
#[derive(Serialize)]
struct StatsJson<'a> {
    health: HealthJson<'a>,
    /// When the numbers were taken (the server's clock): rates between two answers are
    /// per this clock's seconds, whoever computes them.
    unix_ms: u128,
    regions: Ordered<&'a str, RegionJson>,
    total: RegionJson,
    unattributed_declined: u64,
    audit: AuditJson,
    shards: Vec<ShardJson<'a>>,
    remembered_in_memory: u64,
    ids_in_flight: u64,
    /// By kind, as `/metrics` labels them.
    commands: Ordered<&'static str, AnsweredJson>,
    /// Per region: epochs this process completed.
    epochs_completed: Ordered<&'a str, u64>,
    storage: Option<StorageJson>,
    checkpoint: CheckpointJson<'a>,
    clock_guard: Option<ClockGuardJson>,
    /// `null` on a single node.
    replication: Option<ReplicationJson>,
}

/// `value` rounded to `decimals` places: rates and means are estimates, and their last
/// digits are noise.
fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The JSON for machines:
/// `{"health":{...},"unix_ms":N,"regions":{name:{...}},"total":{...},"audit":{...},
/// "shards":[...],...,"commands":{kind:{"done","declined"}},"epochs_completed":{region:N},
/// "storage":null|{...},"checkpoint":{...},"replication":null|{"node_id","role","term",
/// "leader","serving","applied_index","commit_index","snapshots_installed","snapshots_sent"}, each shard with its "digest",
/// "clock_guard":{"jumps_refused":N,"refused":null|{"host_ms","guarded_ms","ahead_ms"}}}`
/// (`clock_guard` is `null` with a manual clock, `storage` with durability `none`).
pub fn json(stats: &Stats, rates: &[f64], health: &Health, replica: &Replica) -> String {
    let a = &stats.audit;
    let shards = stats
        .shards
        .iter()
        .enumerate()
        .map(|(shard, s)| ShardJson {
            shard,
            accounts: s.accounts,
            queue_depth: s.queue_depth,
            internal_depth: s.internal_depth,
            commands: s.commands,
            batches: s.batches,
            inline_batches: s.inline_batches,
            commands_per_s: rounded(rates.get(shard).copied().unwrap_or(0.0), 1),
            mean_batch: rounded(per_batch(s.commands, s.batches), 2),
            busy_ns: s.busy_ns,
            service_us_p50: s.service_us_p50,
            service_us_p99: s.service_us_p99,
            service_us_p999: s.service_us_p999,
            service_us_buckets: &s.service.counts,
            digest: replica.digests.get(shard).map(|digest| format!("{digest:016x}")),
        })
        .collect();
    let commands = Kind::ALL
        .iter()
        .map(|&kind| {
            let declined = Reason::ALL.iter().map(|&r| stats.commands.declined(kind, r)).sum();
            (kind.as_str(), AnsweredJson { done: stats.commands.done(kind), declined })
        })
        .collect();
    let epochs_completed = stats
        .regions
        .iter()
        .zip(&stats.epochs_completed)
        .map(|((name, _), completed)| (name.as_str(), *completed))
        .collect();
    let c = &stats.checkpoint;
    to_json(&StatsJson {
        health: HealthJson::of(health),
        unix_ms: unix_ms(std::time::SystemTime::now()),
        regions: Ordered(
            stats.regions.iter().map(|(name, s)| (name.as_str(), RegionJson::of(s))).collect(),
        ),
        total: RegionJson::of(&stats.total),
        unattributed_declined: stats.unattributed.declined.iter().sum(),
        audit: AuditJson {
            balances_minor: a.balances_minor,
            in_flight_minor: a.in_flight_minor,
            initial_deposits_minor: a.initial_deposits_minor,
            deposits_minor: a.deposits_minor,
            interest_minor: a.interest_minor,
            card_payments_minor: a.card_payments_minor,
            refunds_minor: a.refunds_minor,
            captures_minor: a.captures_minor,
            held_minor: a.held_minor,
            holds: a.holds(),
        },
        shards,
        remembered_in_memory: stats.remembered_in_memory,
        ids_in_flight: stats.ids_in_flight,
        commands: Ordered(commands),
        epochs_completed: Ordered(epochs_completed),
        storage: stats.storage.as_ref().map(StorageJson::of),
        checkpoint: CheckpointJson {
            written: c.written,
            completed_ms: c.completed_ms,
            seconds: rounded(c.duration.as_secs_f64(), 3),
            bytes: c.bytes,
            longest_step_us: c.longest_step.as_micros(),
            longest_step_cpu_us: c.longest_step_cpu.as_micros(),
            error: c.last_error.as_deref(),
        },
        clock_guard: stats.clock_guard.as_ref().map(ClockGuardJson::of),
        replication: replica.view.as_ref().map(|view| ReplicationJson {
            node_id: view.node_id,
            role: view.role.as_str(),
            term: view.term,
            leader: view.leader.map(|leader| leader.to_string()),
            serving: view.serving,
            applied_index: view.applied,
            commit_index: view.commit,
            snapshots_installed: view.snapshots_installed,
            snapshots_sent: view.snapshots_sent,
        }),
    })
}

/// `value` as JSON text. Serializing these plain structs cannot fail (every key is a
/// string, every number finite or written as `null`); if it ever did, the reply says so.
fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|error| serde_json::json!({ "error": error.to_string() }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_822), "2027-01-04");
        assert_eq!(civil_date(-1), "1969-12-31");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    #[test]
    fn the_failed_health_is_json_with_its_reason_escaped() {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1500);
        let health = Health::Failed { since, reason: "disk \"full\"\n".into() };
        let value: serde_json::Value =
            serde_json::from_str(&failed(&health, true)).expect("valid JSON");
        assert_eq!(value["health"]["state"], "failed");
        assert_eq!(value["health"]["since_unix_ms"], 1500);
        assert_eq!(value["health"]["reason"], "disk \"full\"\n");
        let ok: serde_json::Value =
            serde_json::from_str(&failed(&Health::Ok, true)).expect("valid JSON");
        assert_eq!(ok, serde_json::json!({"health": {"state": "ok"}}));
    }
}
