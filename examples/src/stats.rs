//! The pretty dump (SPEC §10): [`plafond::Stats`] as a table for people and as JSON for
//! machines.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use plafond::{Health, Reason, RegionStats, Stats};

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

/// The civil date of a day number (days since 1970-01-01), e.g. `2027-01-04`.
pub fn civil_date(days: i32) -> String {
    // Howard Hinnant's days_from_civil inverse: exact for the proleptic Gregorian calendar.
    let z = i64::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn rolled(stats: &RegionStats) -> String {
    stats.rolled_day.map_or_else(|| "none".into(), civil_date)
}

/// Milliseconds since 1970 of `time` (0 before it).
fn unix_ms(time: std::time::SystemTime) -> u128 {
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
pub fn health_json(health: &Health) -> String {
    match health {
        Health::Ok => "{\"state\":\"ok\"}".into(),
        Health::Failed { since, reason } => format!(
            "{{\"state\":\"failed\",\"since_unix_ms\":{},\"reason\":{}}}",
            unix_ms(*since),
            json_string(reason)
        ),
    }
}

/// What `STATS` answers once the storage failed: the health alone, since the numbers
/// in memory include outcomes that were never made durable.
pub fn failed(health: &Health, json: bool) -> String {
    if json {
        format!("{{\"health\":{}}}", health_json(health))
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
        "{:<12} {:>10} {:>10} {:>10} {:>20} {:>12} {:>20} {:>10} {:>12}",
        "region",
        "profiles",
        "checking",
        "savings",
        "balances",
        "approved",
        "approved_volume",
        "near_ceil",
        "rolled_day"
    );
    for (name, s) in &rows {
        let c = &s.counters;
        let _ = writeln!(
            out,
            "{:<12} {:>10} {:>10} {:>10} {:>20} {:>12} {:>20} {:>10} {:>12}",
            name,
            c.profiles,
            c.checking_accounts,
            c.savings_accounts,
            c.balances_minor,
            c.payments_approved,
            c.payments_approved_minor,
            s.cards_near_ceiling,
            rolled(s)
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
        "\nin flight {}   conservation {} (held {} = owed {}: initial {} + deposits {} + \
         interest {} - card payments {})",
        audit.in_flight_minor,
        if audit.holds() { "ok" } else { "BROKEN" },
        audit.held_minor(),
        audit.owed_minor(),
        audit.initial_deposits_minor,
        audit.deposits_minor,
        audit.interest_minor,
        audit.card_payments_minor
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
    out
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

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn region_json(s: &RegionStats) -> String {
    let c = &s.counters;
    let declined: Vec<String> = Reason::ALL
        .iter()
        .map(|reason| {
            let i = reason.index();
            format!(
                "\"{}\":{{\"count\":{},\"volume_minor\":{}}}",
                reason.as_str(),
                c.declined[i],
                c.declined_minor[i]
            )
        })
        .collect();
    let rolled_day =
        s.rolled_day.map_or_else(|| "null".into(), |day| json_string(&civil_date(day)));
    format!(
        "{{\"profiles\":{},\"accounts\":{{\"CHECKING\":{},\"SAVINGS\":{}}},\"balances_minor\":{},\
         \"payments_approved\":{{\"count\":{},\"volume_minor\":{}}},\"declined\":{{{}}},\
         \"cards_near_ceiling\":{},\"rolled_day\":{}}}",
        c.profiles,
        c.checking_accounts,
        c.savings_accounts,
        c.balances_minor,
        c.payments_approved,
        c.payments_approved_minor,
        declined.join(","),
        s.cards_near_ceiling,
        rolled_day
    )
}

/// The JSON for machines:
/// `{"health":{...},"regions":{name:{...}},"total":{...},"audit":{...},"shards":[...]}`.
pub fn json(stats: &Stats, rates: &[f64], health: &Health) -> String {
    let regions: Vec<String> = stats
        .regions
        .iter()
        .map(|(name, s)| format!("{}:{}", json_string(name), region_json(s)))
        .collect();
    let a = &stats.audit;
    let audit = format!(
        "{{\"balances_minor\":{},\"in_flight_minor\":{},\"initial_deposits_minor\":{},\
         \"deposits_minor\":{},\"interest_minor\":{},\"card_payments_minor\":{},\"holds\":{}}}",
        a.balances_minor,
        a.in_flight_minor,
        a.initial_deposits_minor,
        a.deposits_minor,
        a.interest_minor,
        a.card_payments_minor,
        a.holds()
    );
    let shards: Vec<String> = stats
        .shards
        .iter()
        .enumerate()
        .map(|(shard, s)| {
            format!(
                "{{\"shard\":{},\"accounts\":{},\"queue_depth\":{},\"commands\":{},\
                 \"batches\":{},\"inline_batches\":{},\"commands_per_s\":{:.1},\
                 \"mean_batch\":{:.2},\"busy_ns\":{},\"service_us_p50\":{},\
                 \"service_us_p99\":{},\"service_us_p999\":{}}}",
                shard,
                s.accounts,
                s.queue_depth,
                s.commands,
                s.batches,
                s.inline_batches,
                rates.get(shard).copied().unwrap_or(0.0),
                per_batch(s.commands, s.batches),
                s.busy_ns,
                s.service_us_p50,
                s.service_us_p99,
                s.service_us_p999
            )
        })
        .collect();
    let c = &stats.checkpoint;
    let checkpoint = format!(
        "{{\"written\":{},\"completed_ms\":{},\"seconds\":{:.3},\"bytes\":{},\
         \"longest_step_us\":{},\"longest_step_cpu_us\":{},\"error\":{}}}",
        c.written,
        c.completed_ms.map_or("null".to_owned(), |ms| ms.to_string()),
        c.duration.as_secs_f64(),
        c.bytes,
        c.longest_step.as_micros(),
        c.longest_step_cpu.as_micros(),
        c.last_error.as_deref().map_or("null".to_owned(), json_string)
    );
    format!(
        "{{\"health\":{},\"regions\":{{{}}},\"total\":{},\"unattributed_declined\":{},\
         \"audit\":{},\"shards\":[{}],\"remembered_in_memory\":{},\"ids_in_flight\":{},\
         \"checkpoint\":{}}}",
        health_json(health),
        regions.join(","),
        region_json(&stats.total),
        stats.unattributed.declined.iter().sum::<u64>(),
        audit,
        shards.join(","),
        stats.remembered_in_memory,
        stats.ids_in_flight,
        checkpoint
    )
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
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
