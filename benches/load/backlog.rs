//! `--scenario backlog`: a healthy destination's latency at a steady rate, without and beside a
//! dead destination that holds `--events` (100 000) undelivered deliveries.
//!
//! By default the two are measured **interleaved**, on two servers: one with the healthy
//! destination alone (the baseline), one that also has the dead destination, filled first.
//! Both get a warm-up slice that is not counted, then the steady load goes to one and the other
//! in turn, [`SLICE_SECS`] at a time (A B B A A B …), until each has had `--duration` seconds
//! of it. Only one server is under load at any moment. This class of machine's speed drifts by
//! tens of per cent within minutes (BENCHMARKS.md, "Noise, and how to measure through it");
//! measured one after the other, the two phases would compare the machine at two moments as
//! much as the backlog.
//!
//! `--sequential` runs it on one server instead: the baseline phase, the fill, then the same
//! load again beside the backlog.
//!
//! `HOOKLINE_BENCH_BIN_B=<binary>` compares two builds instead: both servers get the dead
//! destination and its fill, the first runs `HOOKLINE_BENCH_BIN` (or the bench's own build),
//! the second this one, and the rows are `A:` and `B:`. The turns take the machine's drift out
//! of an A/B comparison as they take it out of the backlog's.
//!
//! Interleaved runs also compare the servers turn by turn: each pair of adjacent turns (5 s on
//! one, then 5 s on the other) gives the second server's p99 against the first's, and the
//! median over the pairs is printed per run and over all runs. A pause of the machine falls in
//! one turn and makes one pair an outlier, where it moves that server's p99 for the whole run.
//! The target's figure stays the rise of the whole run's p99; the pairs are for deciding
//! whether a change helped.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use super::{
    Api, Args, BACKLOG_PHASE_SECS, BASELINE, Clocks, Cpu, DbKind, DeadMode, Pub, Receiver, Res,
    Run, STALL, Server, WITH_BACKLOG, free_port, n_or, pct, phase_rows, phase_rows_at,
    publish_closed, publish_paced, received, rise, sorted, writeback,
};

/// Interleaved: how long each turn of the steady load lasts.
const SLICE_SECS: f64 = 5.0;
/// Interleaved: the uncounted first turn of each server (a fresh process and database).
const WARMUP_SECS: f64 = 3.0;

/// The rows' prefixes when two builds are compared (`HOOKLINE_BENCH_BIN_B`).
pub(super) const ARM_A: &str = "A: ";
pub(super) const ARM_B: &str = "B: ";

/// The second build to compare, if any.
fn bin_b() -> Option<String> {
    std::env::var("HOOKLINE_BENCH_BIN_B").ok()
}

/// The dead destination: a receiver answering 500 (or 204, the control), or a closed port.
struct Dead {
    recv: Option<Receiver>,
    url: String,
}

impl Dead {
    async fn start(mode: DeadMode) -> Res<Self> {
        let recv = match mode {
            DeadMode::Status500 => Some(Receiver::start(StatusCode::INTERNAL_SERVER_ERROR).await?),
            DeadMode::Refuse => None,
            DeadMode::Control => Some(Receiver::start(StatusCode::NO_CONTENT).await?),
        };
        let url = match &recv {
            Some(d) => d.url(1),
            None => format!("http://127.0.0.1:{}/d/1", free_port()?),
        };
        Ok(Dead { recv, url })
    }

    /// Creates the dead destination (it takes every event type) and publishes `--events`
    /// events only it takes; with the control, waits until they all arrived.
    async fn fill(&self, api: &Api, args: &Args, run: &mut Run) -> Res<()> {
        api.create_destination("dead", &self.url, &["*"]).await?;
        let t_fill = Instant::now();
        let n = n_or(args, 100_000);
        let filled = publish_closed(api, n, args.concurrency, "audit.logged", args.timeout).await?;
        run.put(
            "backlog: fill events published/s",
            filled.len() as f64 / t_fill.elapsed().as_secs_f64(),
        );
        if let (DeadMode::Control, Some(d)) = (args.dead, &self.recv) {
            d.wait_for(filled.len(), args.timeout, STALL).await?;
        }
        // Optionally let the fill's writes reach the disk first (separates the backlog's
        // effect from the aftermath of writing it).
        if let Some(s) = args.settle {
            tokio::time::sleep(Duration::from_secs_f64(s)).await;
        }
        Ok(())
    }

    /// What the server says the dead destination holds, and what reached it.
    async fn rows(&self, api: &Api, run: &mut Run) -> Res<()> {
        let pending = api
            .gql(
                "query { destinations(first: 10) { edges { node { name stats { pendingDeliveries } } } } }",
                json!({}),
            )
            .await?;
        let dead_pending = pending["destinations"]["edges"]
            .as_array()
            .and_then(|edges| edges.iter().find(|e| e["node"]["name"] == "dead"))
            .and_then(|e| e["node"]["stats"]["pendingDeliveries"].as_f64())
            .unwrap_or(f64::NAN);
        run.put("dead destination: pending deliveries", dead_pending);
        run.put(
            "dead destination: requests received",
            self.recv
                .as_ref()
                .map(|d| d.state.requests.load(Ordering::Relaxed) as f64)
                .unwrap_or(f64::NAN),
        );
        Ok(())
    }
}

/// The steady load's rate and how long each server gets it.
fn load(args: &Args) -> (f64, f64) {
    (
        args.rate.unwrap_or(500.0),
        args.duration.unwrap_or(BACKLOG_PHASE_SECS),
    )
}

/// `--sequential`: on `server`, the baseline, the fill, then the load again.
pub(super) async fn sequential(
    server: &Server,
    api: &Api,
    recv: &Receiver,
    args: &Args,
    run: &mut Run,
) -> Res<()> {
    let (rate, secs) = load(args);
    // The healthy destination takes `order.*`; the dead one takes everything.
    api.create_destination("healthy", &recv.url(0), &["order.*"])
        .await?;
    let cpu = Cpu::start(server);
    writeback(args.writeback, run, BASELINE, server).await?;
    // 1. Baseline: the healthy destination alone at a steady rate.
    let phase_cpu = Cpu::start(server);
    let (base, _) = publish_paced(api, rate, secs, "order.created").await?;
    recv.wait_for(base.len(), args.timeout, STALL).await?;
    phase_cpu.finish_as(BASELINE, server, run).await;
    let rss_before = server.rss();
    phase_rows(run, BASELINE, &base, recv, None)?;
    // 2. A dead destination, filled.
    let dead = Dead::start(args.dead).await?;
    dead.fill(api, args, run).await?;
    // Both steady phases start with the page cache written back (`--writeback`, default
    // `sync`): the fill dirties ≈ 70 MB of new table pages in seconds, which the kernel would
    // otherwise write in one burst 30 s later, inside the second phase. A backlog that builds up over hours is written back as it grows.
    writeback(args.writeback, run, WITH_BACKLOG, server).await?;
    // 3. The same steady load again, now beside the backlog.
    let mark = recv.state.unique.load(Ordering::Relaxed);
    let phase_cpu = Cpu::start(server);
    let (during, _) = publish_paced(api, rate, secs, "order.created").await?;
    recv.wait_for(mark + during.len(), args.timeout, STALL)
        .await?;
    phase_cpu.finish_as(WITH_BACKLOG, server, run).await;
    phase_rows(run, WITH_BACKLOG, &during, recv, None)?;
    run.put(
        "healthy publish→receive p99 rise (%)",
        rise(&run.e2e[BASELINE], &run.e2e[WITH_BACKLOG]),
    );
    run.put("server RSS after baseline (MiB)", rss_before);
    run.put("server RSS with backlog (MiB)", server.rss());
    dead.rows(api, run).await?;
    cpu.finish(server, run).await;
    Ok(())
}

/// One side of the interleaved comparison: a server, its client, and what its turns gathered.
struct Arm<'a> {
    server: &'a Server,
    api: Api,
    prefix: &'static str,
    pubs: Vec<Pub>,
    /// Seconds from each turn's first publish to its last delivery, summed.
    busy: f64,
    server_cpu: f64,
    bench_cpu: f64,
    /// Each counted turn's publish→receive p99 (ms).
    turn_p99: Vec<f64>,
}

impl Arm<'_> {
    /// One turn of the steady load; `counted` false for the warm-up.
    async fn turn(&mut self, recv: &Receiver, args: &Args, secs: f64, counted: bool) -> Res<()> {
        let rate = load(args).0;
        let mark = recv.state.unique.load(Ordering::Relaxed);
        let clocks = Clocks::start(self.server);
        let (pubs, _) = publish_paced(&self.api, rate, secs, "order.created").await?;
        recv.wait_for(mark + pubs.len(), args.timeout, STALL)
            .await?;
        if counted {
            let spent = clocks.spent(self.server);
            self.busy += spent.wall;
            self.server_cpu += spent.server;
            self.bench_cpu += spent.me;
            self.turn_p99
                .push(pct(&received(&pubs, recv, None).e2e, 99.0));
            self.pubs.extend(pubs);
        }
        Ok(())
    }

    fn rows(&self, recv: &Receiver, run: &mut Run) -> Res<()> {
        let p = self.prefix;
        run.put(&format!("{p}time under load (s)"), self.busy);
        run.put(&format!("{p}server CPU (s)"), self.server_cpu);
        run.put(
            &format!("{p}bench CPU: load gen + receiver (s)"),
            self.bench_cpu,
        );
        phase_rows_at(run, p, &self.pubs, recv, None, Some(self.busy))
    }
}

/// Interleaved (the default): see the module's comment.
pub(super) async fn run(kind: DbKind, args: &Args) -> Res<Run> {
    let mut base = Server::start(kind, args).await?;
    let started = match bin_b() {
        Some(b) => Server::start_bin(kind, args, &b).await,
        None => Server::start(kind, args).await,
    };
    let mut with = match started {
        Ok(s) => s,
        Err(e) => {
            base.stop().await;
            return Err(e);
        }
    };
    let r = interleaved(&base, &with, args).await.map_err(|e| {
        format!(
            "{e}\n--- first server log (tail) ---\n{}\n--- second server log (tail) ---\n{}",
            base.log_tail(),
            with.log_tail()
        )
    });
    base.stop().await;
    with.stop().await;
    r
}

async fn interleaved(base: &Server, with: &Server, args: &Args) -> Res<Run> {
    let (_, secs) = load(args);
    let compare = bin_b().is_some();
    let recv = Receiver::start(StatusCode::NO_CONTENT).await?;
    let mut run = Run::default();
    let arm = |server, prefix| -> Res<Arm<'_>> {
        Ok(Arm {
            server,
            api: Api::new(server, args.concurrency)?,
            prefix,
            pubs: Vec::new(),
            busy: 0.0,
            server_cpu: 0.0,
            bench_cpu: 0.0,
            turn_p99: Vec::new(),
        })
    };
    let (pa, pb) = if compare {
        (ARM_A, ARM_B)
    } else {
        (BASELINE, WITH_BACKLOG)
    };
    let (mut a, mut b) = (arm(base, pa)?, arm(with, pb)?);
    // The healthy destination takes `order.*` on both; the dead one (on `with`, and on both
    // when comparing builds) everything.
    a.api
        .create_destination("healthy", &recv.url(0), &["order.*"])
        .await?;
    b.api
        .create_destination("healthy", &recv.url(1), &["order.*"])
        .await?;
    a.turn(&recv, args, WARMUP_SECS, false).await?;
    b.turn(&recv, args, WARMUP_SECS, false).await?;
    let rss_before = with.rss();
    let dead = Dead::start(args.dead).await?;
    if compare {
        dead.fill(&a.api, args, &mut run).await?;
    }
    dead.fill(&b.api, args, &mut run).await?;
    // The fill's pages written back first (see `sequential`); one write-back serves both.
    writeback(args.writeback, &mut run, "", with).await?;
    let turns = (secs / SLICE_SECS).ceil().max(1.0) as usize;
    let slice = secs / turns as f64;
    for i in 0..turns {
        // A B, B A, A B, …: neither server always goes first.
        if i % 2 == 0 {
            a.turn(&recv, args, slice, true).await?;
            b.turn(&recv, args, slice, true).await?;
        } else {
            b.turn(&recv, args, slice, true).await?;
            a.turn(&recv, args, slice, true).await?;
        }
    }
    a.rows(&recv, &mut run)?;
    b.rows(&recv, &mut run)?;
    let rise_row = if compare {
        "B against A: healthy publish→receive p99 (%)"
    } else {
        "healthy publish→receive p99 rise (%)"
    };
    run.put(rise_row, rise(&run.e2e[pa], &run.e2e[pb]));
    // A pause of the machine lands in one turn, and one server's p99 for the whole run takes
    // it; the pairs of adjacent turns, each under the same conditions, show it as one outlier.
    run.turn_rises = a
        .turn_p99
        .iter()
        .zip(&b.turn_p99)
        .map(|(a, b)| (b / a - 1.0) * 100.0)
        .collect();
    let pairs = sorted(run.turn_rises.clone());
    run.put(
        &format!(
            "{}, median over turn pairs",
            rise_row.trim_end_matches(" (%)")
        ),
        pct(&pairs, 50.0),
    );
    run.put("second server RSS before the fill (MiB)", rss_before);
    run.put("second server RSS with backlog (MiB)", with.rss());
    run.put("second server peak RSS VmHWM (MiB)", with.hwm());
    run.put("first server peak RSS VmHWM (MiB)", base.hwm());
    dead.rows(&b.api, &mut run).await?;
    Ok(run)
}
