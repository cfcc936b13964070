//! The server target: connections of the wire crate's async client, closed loop (or the
//! rate mode of `paced`), and the conservation check through `STATS JSON`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;

use plafond::{CommandId, Opening};
use plafond_examples::faultproxy::{Profile, Proxy};
use plafond_examples::sample::Zipf;
use plafond_wire::{encode_command, AsyncClient, Value};

use crate::args::{Flow, LoadgenArgs};
use crate::paced::{paced_worker, Pacer, PacingTicker, Schedule};
use crate::tally::{count_reply, Tally};
use crate::workload::{Picker, Shared, DAY_MS};

// ---------------------------------------------------------------------------------------
// Server: connections × pipeline depth of raw RESP over tokio TcpStreams; closed-loop, or
// paced by `--rate`.

pub fn server_target(
    args: &LoadgenArgs,
    shared: &Arc<Shared>,
    zipf: Option<Arc<Zipf>>,
) -> anyhow::Result<(Tally, f64, String)> {
    let addr = args.server.addr();
    let (connections, pipeline) = (args.connections, args.pipeline);
    let token = args.server.token()?;
    // Kept until the run ends: dropping it closes the connections through it.
    let proxy = match &args.network {
        Some(profile) => Some(network_proxy(&addr, profile)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // In a cluster, every connection goes to the leader (SPEC §14); through a network
        // profile, to the proxy in front of the address given (point it at the leader).
        let (mut control, leader) = AsyncClient::connect_leader(&addr, token.as_deref()).await?;
        let paying_addr = proxy.as_ref().map_or(leader, |proxy| proxy.addr().to_string());
        check_population(&mut control, shared.workload.cards).await?;
        let clock_works = !matches!(control.call(&["CLOCK.ADVANCE", "0"]).await?, Value::Error(_));
        if !clock_works {
            eprintln!(
                "loadgen: the server's clock is not manual (start it with --clock manual): \
                 the business day will not advance"
            );
        }
        let pacing = PacingTicker::start()?;
        let measured_from = Instant::now();
        let ticker = crate::progress(shared.clone(), measured_from);
        let mut tasks = Vec::new();
        for index in 0..connections {
            let conn = AsyncClient::connect(&paying_addr, token.as_deref()).await?;
            let picker = Picker::new(&shared.workload, &zipf, index);
            let shared = shared.clone();
            let hold_flow = args.flow == Flow::Hold;
            tasks.push(match shared.workload.rate_per_s {
                None if hold_flow => {
                    tokio::spawn(hold_worker(conn, shared, picker, pipeline, clock_works))
                }
                None => tokio::spawn(server_worker(conn, shared, picker, pipeline, clock_works)),
                Some(rate_per_s) => {
                    let schedule = Schedule::new(rate_per_s, index, connections, measured_from);
                    let deadline = measured_from + shared.workload.duration;
                    let pacer = Pacer::new(schedule, pipeline, deadline);
                    let tick = pacing.tick.clone();
                    tokio::spawn(paced_worker(conn, shared, picker, pacer, tick, clock_works))
                }
            });
        }
        let mut tally = Tally::new()?;
        for task in tasks {
            tally.add(&task.await??)?;
        }
        let secs = measured_from.elapsed().as_secs_f64();
        shared.stop.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        drop(pacing);
        let conservation = server_conservation(&mut control, shared.workload.cards, &tally).await?;
        Ok((tally, secs, conservation))
    })
}

/// A fault proxy of `profile` in this process, in front of the server at `addr`.
fn network_proxy(addr: &str, profile: &Profile) -> anyhow::Result<Proxy> {
    use std::net::ToSocketAddrs as _;
    let Some(upstream) = addr.to_socket_addrs()?.next() else {
        bail!("{addr} names no address");
    };
    let listen = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    let proxy = Proxy::start(listen, upstream, profile.clone())?;
    eprintln!("loadgen: through a fault proxy, {profile}");
    Ok(proxy)
}

/// Checks that the server holds the §11 population: card N-1 exists, card N does not.
pub async fn check_population(control: &mut AsyncClient, cards: u64) -> anyhow::Result<()> {
    let last = control.call(&["CARD", &(cards - 1).to_string()]).await?;
    let beyond = control.call(&["CARD", &cards.to_string()]).await?;
    let is_card = |v: &Value| matches!(v, Value::Array(items) if items.len() == 5);
    if !is_card(&last) || is_card(&beyond) {
        bail!(
            "the server does not hold exactly {cards} cards (start it with --populate {cards}, \
             or pass --cards to match)"
        );
    }
    Ok(())
}

/// The server's own audit, and the exact check for a freshly populated server without other
/// traffic: balances + approved volume = N × 20_000.
pub async fn server_conservation(
    control: &mut AsyncClient,
    cards: u64,
    tally: &Tally,
) -> anyhow::Result<String> {
    let Value::Bulk(json) = control.call(&["STATS", "JSON"]).await? else {
        bail!("STATS JSON did not reply a bulk string");
    };
    let stats: serde_json::Value = serde_json::from_slice(&json)?;
    let holds = stats["audit"]["holds"].as_bool() == Some(true);
    // u128 in the server; a population within u64 is all a load test makes.
    let balances = stats["total"]["balances_minor"].as_u64().map(u128::from);
    let expected = u128::from(cards) * u128::from(Opening::REFERENCE.deposit_minor);
    let exact = balances.map(|b| b + u128::from(tally.approved_minor) == expected);
    Ok(match (holds, exact) {
        (true, Some(true)) => format!(
            "ok (audit holds; balances {} + approved {} = {expected})",
            balances.unwrap_or(0),
            tally.approved_minor
        ),
        (true, _) => format!(
            "ok (audit holds; balances {:?} + approved {} != {expected}: other traffic on the \
             server?)",
            balances, tally.approved_minor
        ),
        (false, _) => "BROKEN (the server's audit does not hold)".to_string(),
    })
}

pub async fn server_worker(
    mut conn: AsyncClient,
    shared: Arc<Shared>,
    mut picker: Picker,
    pipeline: usize,
    clock_works: bool,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let deadline = Instant::now() + shared.workload.duration;
    let mut request = Vec::with_capacity(pipeline * 40);
    let mut amounts = Vec::with_capacity(pipeline);
    while Instant::now() < deadline {
        let (count, days) = shared.claim(pipeline as u64);
        if count == 0 {
            break;
        }
        request.clear();
        amounts.clear();
        let advance = clock_works && days > 0;
        if advance {
            encode_command(&mut request, &["CLOCK.ADVANCE", &(DAY_MS * days as i64).to_string()]);
        }
        for _ in 0..count {
            encode_pay(&mut request, &mut picker, &mut amounts);
        }
        let approved_before = tally.approved;
        let sent = Instant::now();
        conn.send(&request).await?;
        if advance {
            if let Value::Error(error) = conn.read().await? {
                bail!("CLOCK.ADVANCE refused: {error}");
            }
        }
        for &amount in &amounts {
            let reply = conn.read().await?;
            tally.record_latency(sent, 1);
            count_reply(&mut tally, &reply, amount);
        }
        shared.done.fetch_add(count, Ordering::Relaxed);
        shared.approved.fetch_add(tally.approved - approved_before, Ordering::Relaxed);
    }
    Ok(tally)
}

/// Sends the day's `CLOCK.ADVANCE` first if `days` says so; an error if refused.
async fn advance_days(conn: &mut AsyncClient, days: u64) -> anyhow::Result<()> {
    let mut request = Vec::new();
    encode_command(&mut request, &["CLOCK.ADVANCE", &(DAY_MS * days as i64).to_string()]);
    conn.send(&request).await?;
    if let Value::Error(error) = conn.read().await? {
        bail!("CLOCK.ADVANCE refused: {error}");
    }
    Ok(())
}

/// `--flow hold`: each payment is two messages, `AUTHORIZE card amount`, then, once
/// approved, `CAPTURE.FINAL hold part` of a random part of it (the rest is released). Each
/// round trip carries the captures of the previous round's approved authorizations and the
/// next round's authorizations, so a payment takes two round trips but a connection keeps
/// one in flight, as the `PAY` flow does. A payment's latency runs from its authorization's
/// sending to its capture's reply. Approved volume is what was captured, so the exact
/// conservation check holds as for `PAY`.
pub async fn hold_worker(
    mut conn: AsyncClient,
    shared: Arc<Shared>,
    mut picker: Picker,
    pipeline: usize,
    clock_works: bool,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let deadline = Instant::now() + shared.workload.duration;
    let mut request = Vec::with_capacity(pipeline * 96);
    let mut amounts = Vec::with_capacity(pipeline);
    let mut ids = Vec::with_capacity(pipeline);
    // The captures to send with the next round: (hold, part, command id, authorized at).
    let mut captures: Vec<(i64, u64, Option<CommandId>, Instant)> = Vec::new();
    loop {
        let (count, days) = match Instant::now() < deadline {
            true => shared.claim(pipeline as u64),
            false => (0, 0),
        };
        if count == 0 && captures.is_empty() {
            break;
        }
        if clock_works && days > 0 {
            advance_days(&mut conn, days).await?;
        }
        request.clear();
        amounts.clear();
        ids.clear();
        for (hold, part, id, _) in &captures {
            let (hold, part) = (hold.to_string(), part.to_string());
            match id {
                Some(id) => {
                    let capture_id = format!("{}-c", id.as_str());
                    encode_command(&mut request, &["CAPTURE.FINAL", &hold, &part, &capture_id]);
                }
                None => encode_command(&mut request, &["CAPTURE.FINAL", &hold, &part]),
            }
        }
        for _ in 0..count {
            let (card, amount) = picker.pay();
            let (card, amount_text) = (card.to_string(), amount.to_string());
            let id = picker.command_id();
            match &id {
                Some(id) => {
                    encode_command(&mut request, &["AUTHORIZE", &card, &amount_text, id.as_str()])
                }
                None => encode_command(&mut request, &["AUTHORIZE", &card, &amount_text]),
            }
            amounts.push(amount);
            ids.push(id);
        }
        let sent = Instant::now();
        conn.send(&request).await?;
        let approved_before = tally.approved;
        let mut finished = 0;
        for (_, part, _, authorized_at) in captures.drain(..) {
            let reply = conn.read().await?;
            tally.record_latency(authorized_at, 1);
            finished += 1;
            match &reply {
                Value::Array(items) if items.first() == Some(&Value::Simple("DONE".into())) => {
                    tally.approved += 1;
                    tally.approved_minor += part;
                }
                _ => tally.errors += 1,
            }
        }
        for (&amount, id) in amounts.iter().zip(ids.drain(..)) {
            let reply = conn.read().await?;
            match approved_hold(&reply) {
                Some(hold) => captures.push((hold, 1 + picker.rng.below(amount), id, sent)),
                None => {
                    count_reply(&mut tally, &reply, amount);
                    tally.record_latency(sent, 1);
                    finished += 1;
                }
            }
        }
        shared.done.fetch_add(finished, Ordering::Relaxed);
        shared.approved.fetch_add(tally.approved - approved_before, Ordering::Relaxed);
    }
    Ok(tally)
}

/// The hold id of an `[APPROVED, hold, available, spent_7d]` reply.
fn approved_hold(reply: &Value) -> Option<i64> {
    match reply {
        Value::Array(items) if items.len() == 4 && items[0] == Value::Simple("APPROVED".into()) => {
            match items[1] {
                Value::Integer(hold) => Some(hold),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Appends the next `PAY` (with its command id under `--ids unique`) to `output`, and its
/// amount to `amounts`; returns the amount.
pub fn encode_pay(output: &mut Vec<u8>, picker: &mut Picker, amounts: &mut Vec<u64>) -> u64 {
    let (card, amount) = picker.pay();
    let (card_text, amount_text) = (card.to_string(), amount.to_string());
    match picker.command_id() {
        Some(id) => encode_command(
            output,
            &[&b"PAY"[..], card_text.as_bytes(), amount_text.as_bytes(), id.as_bytes()],
        ),
        None => encode_command(output, &["PAY", &card_text, &amount_text]),
    }
    amounts.push(amount);
    amount
}
