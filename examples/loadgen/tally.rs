//! What the workers saw (latencies, outcomes) and the report printed at the end.

use std::time::Instant;

use hdrhistogram::Histogram;

use plafond::Reason;
use plafond_wire::Value;

use crate::workload::Workload;

/// The highest latency the histograms record (longer ones are clamped to it).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Achieved rates more than this fraction below `--rate` get a warning.
pub const RATE_SHORTFALL_WARN: f64 = 0.05;

/// The outcomes one worker saw.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    /// Rate mode only: how late each payment was queued for sending after it was due.
    pub schedule_lag_us: Histogram<u64>,
    pub approved: u64,
    pub approved_minor: u64,
    pub declined: [u64; Reason::ALL.len()],
    pub errors: u64,
}

impl Tally {
    pub fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
            schedule_lag_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
            approved: 0,
            approved_minor: 0,
            declined: [0; Reason::ALL.len()],
            errors: 0,
        })
    }

    pub fn add(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        self.schedule_lag_us.add(&other.schedule_lag_us)?;
        self.approved += other.approved;
        self.approved_minor += other.approved_minor;
        for (mine, theirs) in self.declined.iter_mut().zip(other.declined) {
            *mine += theirs;
        }
        self.errors += other.errors;
        Ok(())
    }

    pub fn record_latency(&mut self, since: Instant, count: u64) {
        let us = (since.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let _ = self.latency_us.record_n(us, count);
    }

    /// Records one payment's latency from `due` (not from when it was sent: see HELP).
    pub fn record_latency_from_due(&mut self, due: Instant, replied: Instant) {
        let us =
            (replied.saturating_duration_since(due).as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let _ = self.latency_us.record(us);
    }

    pub fn record_schedule_lag(&mut self, due: Instant, queued: Instant) {
        let us = (queued.saturating_duration_since(due).as_micros() as u64).min(LATENCY_MAX_US);
        let _ = self.schedule_lag_us.record(us);
    }

    pub fn declined_total(&self) -> u64 {
        self.declined.iter().sum()
    }
}

pub fn count_reply(tally: &mut Tally, reply: &Value, amount: u64) {
    let Value::Array(items) = reply else {
        tally.errors += 1;
        return;
    };
    match (items.first(), items.get(1)) {
        (Some(Value::Simple(word)), _) if word == "APPROVED" => {
            tally.approved += 1;
            tally.approved_minor += amount;
        }
        (Some(Value::Simple(word)), Some(Value::Simple(reason))) if word == "DECLINED" => {
            match Reason::ALL.iter().find(|r| r.as_str() == reason) {
                Some(reason) => tally.declined[reason.index()] += 1,
                None => tally.errors += 1,
            }
        }
        _ => tally.errors += 1,
    }
}

pub fn report(
    target: &str,
    workload: &Workload,
    tally: &Tally,
    secs: f64,
    conservation: &str,
    started: Instant,
) {
    let ops = tally.approved + tally.declined_total();
    let h = &tally.latency_us;
    println!(
        "workload: cards={} ops={} distribution={} seed={} day_every={}",
        workload.cards,
        workload.ops,
        workload.zipf.map_or("uniform".to_string(), |s| format!("zipf(s={s})")),
        workload.seed,
        workload.day_every
    );
    println!(
        "latency_us: p50={} p90={} p99={} p99.9={} max={}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    println!("approved: {} (volume {})", tally.approved, tally.approved_minor);
    for reason in Reason::ALL {
        let count = tally.declined[reason.index()];
        if count > 0 {
            println!("declined {}: {count}", reason.as_str());
        }
    }
    if tally.errors > 0 {
        println!("errors: {}", tally.errors);
    }
    println!("conservation: {conservation}");
    println!("total time incl. setup: {:.1} s", started.elapsed().as_secs_f64());
    let ops_per_s = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
    if let Some(rate) = workload.rate_per_s {
        report_rate(rate, ops_per_s, &tally.schedule_lag_us);
    }
    println!(
        "summary target={target} ops={ops} secs={secs:.3} ops_per_s={ops_per_s:.0} p50_us={} \
         p99_us={} p999_us={} approved={} declined={} insufficient_funds={} \
         ceiling_exceeded={} errors={} conservation={} rate={} ids={} network={}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        tally.approved,
        tally.declined_total(),
        tally.declined[Reason::InsufficientFunds.index()],
        tally.declined[Reason::CeilingExceeded.index()],
        tally.errors,
        if conservation.starts_with("ok") { "ok" } else { "FAILED" },
        workload.rate_per_s.unwrap_or(0.0),
        if workload.ids { "unique" } else { "none" },
        workload.network.as_deref().unwrap_or("direct")
    );
}

/// The achieved rate next to the target, and a warning when it falls short: then the server
/// (or this client) could not keep up, and the latencies include the backlog.
pub fn report_rate(rate_per_s: f64, achieved_per_s: f64, schedule_lag_us: &Histogram<u64>) {
    println!(
        "rate: target {rate_per_s:.0} ops/s, achieved {achieved_per_s:.0} ops/s ({:.1} %)",
        100.0 * achieved_per_s / rate_per_s
    );
    println!(
        "schedule lag_us (due -> queued for sending): p50={} p99={} max={}",
        schedule_lag_us.value_at_quantile(0.5),
        schedule_lag_us.value_at_quantile(0.99),
        schedule_lag_us.max()
    );
    if achieved_per_s < rate_per_s * (1.0 - RATE_SHORTFALL_WARN) {
        println!(
            "WARNING: achieved {achieved_per_s:.0} ops/s is more than {:.0} % below the target \
             {rate_per_s:.0} ops/s: the server or the client could not keep up; the latencies \
             include the backlog",
            100.0 * RATE_SHORTFALL_WARN
        );
    }
}
