//! A data-plane thread: commands from the control plane, rounds, and what it does when idle.
//!
//! Under load the worker runs rounds back to back. When frames stop it keeps looking for a
//! while (first busy, then yielding the core), then sleeps until a port, the tunnel or its
//! waker has something ([`IdlePolicy`]).
//!
//! Each worker also accounts its time ([`WorkerTime`]): between two looks at the clock, the
//! time goes to "busy" if a round in between moved frames, else to "idle" (spinning, yielding
//! or asleep). Under load the clock is read every `clock_rounds` rounds, so the split is as
//! fine as that, and costs no extra clock read but one after each sleep.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::context::{Command, Context};
use super::round::Dataplane;
use super::worker_time::TimeAccount;

/// When an idle worker spins, yields and sleeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdlePolicy {
    /// How long to keep looking for frames after the last one before sleeping. Waking a
    /// sleeping thread costs the sender an inter-processor interrupt and us a context switch
    /// (a quarter of the time in the TAP-to-TAP profile); a TCP stream's next superframe or ACK
    /// usually comes within this. Measured on 2 cores (same-node iperf3): 64 rounds of epoll
    /// (~10 us) 10.7-11.6 Gbit/s, 50 us 12.0-14.9, 100 us 13.1-14.3.
    spin: Duration,
    /// The first part of `spin` is a busy loop; after it the thread yields between looks, so
    /// a pod (or another node's switch) runnable on this core gets it. The pods share the
    /// switch's cores: cross-node TCP on 2 cores 7.3 Gbit/s busy-spinning, 8.1-8.8 yielding.
    busy: Duration,
    /// Busy rounds between two looks at the clock (a `clock_gettime` per round was 1.7% of
    /// the same-node profile).
    clock_rounds: u32,
    /// Longest sleep; bounds how late ageing runs on an idle switch.
    max_sleep: Duration,
    /// Time between two MAC-table ageing passes.
    ageing_every: Duration,
}

impl IdlePolicy {
    pub(super) const DEFAULT: IdlePolicy = IdlePolicy {
        spin: Duration::from_micros(50),
        busy: Duration::from_micros(10),
        clock_rounds: 64,
        max_sleep: Duration::from_secs(1),
        ageing_every: Duration::from_secs(1),
    };
}

/// The loop of data-plane thread `worker`, until the switch stops.
pub(super) fn run(
    mut dp: Dataplane,
    ctx: &Context,
    worker: usize,
    commands: Receiver<Command>,
    policy: IdlePolicy,
) {
    let Some(waker) = ctx.workers.get(worker).map(|w| &w.waker) else {
        return;
    };
    let frames = &ctx.worker_frames[worker];
    dp.watch_waker(waker);
    let mut last_frame = Instant::now();
    let mut time = TimeAccount::new(&ctx.worker_time[worker], last_frame);
    let mut next_ageing = Instant::now() + policy.ageing_every;
    // Busy rounds since the clock was last read: under load the clock (ageing, spinning) is
    // only looked at every `clock_rounds` rounds.
    let mut busy_rounds = 0u32;
    // One round and its bookkeeping; returns (frames, ports found closed).
    let round = |dp: &mut Dataplane| {
        let n = dp.poll_once();
        if n > 0 {
            frames.fetch_add(n as u64, Ordering::Relaxed);
        }
        let closed = dp.take_closed();
        for (id, metrics) in &closed {
            ctx.forget_closed(worker, *id, metrics);
        }
        (n, closed.len())
    };
    // Start of the loop iteration being timed (for stalls).
    let mut iteration = Instant::now();
    loop {
        let mut handled = 0usize;
        while let Ok(cmd) = commands.try_recv() {
            handled += 1;
            match cmd {
                Command::Attach(id, port, metrics, ack) => {
                    dp.add_port(id, port, metrics);
                    let _ = ack.send(());
                }
                Command::Detach(id, ack) => {
                    let _ = ack.send(dp.remove_port(id));
                }
                Command::Release(id, metrics) => dp.release(id, &metrics),
                Command::Capture(target, tap, ack) => {
                    let _ = ack.send(dp.add_capture(target, tap));
                }
                Command::Uncapture(id) => dp.remove_capture(id),
                Command::Send(to, frames) => {
                    dp.send_frames(to, &frames);
                }
                Command::Pause(paused, resume) => {
                    let _ = paused.send(());
                    let _ = resume.recv();
                    // Paused on purpose: not a stall.
                    iteration = Instant::now();
                }
            }
        }
        if ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        let (n, _) = round(&mut dp);
        if n > 0 {
            busy_rounds += 1;
            if busy_rounds < policy.clock_rounds {
                continue;
            }
        }
        // The stall check costs no clock read of its own: under load it covers the rounds
        // since the last read (at most `clock_rounds`, normally a few milliseconds together).
        let now = Instant::now();
        let rounds = busy_rounds.max(1);
        ctx.worker_time[worker].check(worker, now - iteration, rounds, handled);
        iteration = now;
        time.account(now, busy_rounds > 0 || n > 0);
        if busy_rounds > 0 {
            // Frames came in the rounds just before this one.
            last_frame = now;
            busy_rounds = 0;
        }
        if now >= next_ageing {
            // One ageing pass per switch: the first worker's.
            if worker == 0 {
                let aged = ctx.tables.mac.age(ctx.tables.mac.clock(now));
                if aged > 0 {
                    tracing::debug!("aged out {aged} MAC entries");
                }
            }
            next_ageing = now + policy.ageing_every;
        }
        if n > 0 {
            last_frame = now;
            continue;
        }
        let idle_for = now.duration_since(last_frame);
        if idle_for < policy.spin {
            if idle_for < policy.busy {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        // Announce the sleep, then look once more: a frame or command that came just before
        // the announcement would otherwise wait for the timeout.
        waker.prepare_sleep();
        let (n, closed) = round(&mut dp);
        if n > 0 || closed > 0 || !commands.is_empty() {
            waker.awake();
            last_frame = Instant::now();
            continue;
        }
        let timeout = next_ageing
            .saturating_duration_since(Instant::now())
            .min(policy.max_sleep);
        dp.sleep(waker, timeout);
        waker.awake();
        // The sleep is idle time, whatever the next rounds bring (and no stall).
        iteration = Instant::now();
        time.account(iteration, false);
    }
}

/// Pins the calling thread to `cpu`; a CPU the process may not use is logged, not fatal.
pub(super) fn pin_to(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => tracing::debug!(cpu, "data-plane thread pinned"),
        Err(e) => tracing::warn!(cpu, "cannot pin the data-plane thread: {e}; left unpinned"),
    }
}

/// The CPUs this process may run on, lowest first (empty if the kernel will not say).
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}
