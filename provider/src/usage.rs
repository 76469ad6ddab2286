//! What HTTP-mode replicas use: CPU and resident memory summed over each replica's process group
//! (a replica's process leads its own group, and its children stay in it), read from `/proc`.
//!
//! One measurement reads every process's `/proc/<pid>/stat` once, for all functions together,
//! and keeps only the groups asked about; CPU is the growth of the groups' CPU time since the
//! previous measurement. Measurements are taken when usage is asked for (`GET
//! /system/functions`, the autoscaler's round for a function that scales on CPU), at most one
//! per [`MIN_INTERVAL`]; nothing is read per request, and what is kept is one number per
//! running replica and one usage per function.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use sluice_core::{FunctionRef, FunctionUsage};
use tokio::time::Instant;

use crate::sys;

/// A measurement younger than this is answered again rather than taken anew: CPU over a
/// shorter interval is mostly rounding (a clock tick is 10 ms of CPU).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// One process group's totals at one look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupTotals {
    /// CPU time of its processes, user and system, with that of the children they reaped, in
    /// clock ticks.
    pub(crate) ticks: u64,
    /// Resident pages of its processes.
    pub(crate) rss_pages: u64,
}

/// The process group, CPU ticks (user, system, and reaped children's) and resident pages in
/// one `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(i32, u64, u64)> {
    // The command name, in parentheses, may hold spaces and parentheses: fields count from
    // after its last ')'. Field 3 (state) is then the first.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let pgrp = field(5)?.parse().ok()?;
    let mut ticks = 0u64;
    for n in 14..=17 {
        // cutime and cstime are signed in the kernel's format; never negative in practice.
        ticks = ticks.saturating_add(field(n)?.parse::<i64>().ok()?.max(0) as u64);
    }
    let rss = field(24)?.parse::<i64>().ok()?.max(0) as u64;
    Some((pgrp, ticks, rss))
}

/// One pass over `/proc`: the totals of each group in `groups` that has a process now.
pub(crate) fn sample_groups(groups: &HashSet<i32>) -> HashMap<i32, GroupTotals> {
    let mut totals: HashMap<i32, GroupTotals> = HashMap::with_capacity(groups.len());
    if groups.is_empty() {
        return totals;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((pgrp, ticks, rss)) = parse_stat(&stat) else {
            continue;
        };
        if groups.contains(&pgrp) {
            let t = totals.entry(pgrp).or_default();
            t.ticks = t.ticks.saturating_add(ticks);
            t.rss_pages = t.rss_pages.saturating_add(rss);
        }
    }
    totals
}

/// Measures functions' usage from their replicas' process groups, remembering the last
/// measurement for the next one's CPU.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    last: Mutex<Last>,
}

#[derive(Debug, Default)]
struct Last {
    at: Option<Instant>,
    /// Each group's CPU ticks then.
    ticks: HashMap<i32, u64>,
    /// Each measured function's usage then.
    usage: HashMap<FunctionRef, FunctionUsage>,
}

impl Meter {
    /// `function`'s usage from a measurement at most [`MIN_INTERVAL`] old, measuring all of
    /// `groups()` (every HTTP-mode function with its replicas' process groups) if the last one
    /// is older. `None` until the function has been measured once.
    pub(crate) fn usage(
        &self,
        function: &FunctionRef,
        groups: impl FnOnce() -> Vec<(FunctionRef, Vec<i32>)>,
    ) -> Option<FunctionUsage> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.at.is_none_or(|at| at.elapsed() >= MIN_INTERVAL) {
            measure(&mut last, groups());
        }
        last.usage.get(function).cloned()
    }

    /// Measures `groups` now, whatever the age of the last measurement.
    #[cfg(test)]
    fn measure_now(
        &self,
        groups: Vec<(FunctionRef, Vec<i32>)>,
    ) -> HashMap<FunctionRef, FunctionUsage> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        measure(&mut last, groups);
        last.usage.clone()
    }
}

/// Replaces `last` with a measurement of `groups`. A function's CPU is the growth of its
/// groups' ticks over the time since the last measurement (a group new since then counts
/// from its start: it began after it), in millicores; zero at the first measurement.
fn measure(last: &mut Last, groups: Vec<(FunctionRef, Vec<i32>)>) {
    let now = Instant::now();
    let wanted: HashSet<i32> = groups.iter().flat_map(|(_, g)| g.iter().copied()).collect();
    let totals = sample_groups(&wanted);
    let elapsed = last.at.map(|at| now.duration_since(at).as_secs_f64());
    let (tick_ms, page) = (1000.0 / sys::clock_ticks() as f64, sys::page_size() as f64);
    let mut usage = HashMap::with_capacity(groups.len());
    for (function, replicas) in groups {
        let (mut grown, mut pages) = (0u64, 0u64);
        for t in replicas.iter().filter_map(|g| Some((g, totals.get(g)?))) {
            let before = last.ticks.get(t.0).copied().unwrap_or(0);
            grown = grown.saturating_add(t.1.ticks.saturating_sub(before));
            pages = pages.saturating_add(t.1.rss_pages);
        }
        let cpu = match elapsed {
            Some(secs) if secs > 0.0 => grown as f64 * tick_ms / secs,
            _ => 0.0,
        };
        usage.insert(
            function,
            FunctionUsage {
                cpu,
                total_memory_bytes: pages as f64 * page,
            },
        );
    }
    *last = Last {
        at: Some(now),
        ticks: totals.into_iter().map(|(g, t)| (g, t.ticks)).collect(),
        usage,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_after_the_command_name() {
        // A command name with a space and a parenthesis; pgrp 4242, utime 150, stime 50,
        // cutime 7, cstime 3, rss 812 pages.
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 7 3 20 0 1 \
                    0 12345 10000000 812 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat(line), Some((4242, 210, 812)));
        assert_eq!(parse_stat("12 (short) S 1"), None);
    }

    /// A real process burning CPU in its own group is measured: well above 0 millicores
    /// (asked again until a deadline, as the machine may be busy), and resident memory.
    #[tokio::test]
    async fn a_busy_process_group_is_measured() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("sh starts");
        let group = i32::try_from(child.id().expect("running")).expect("a pid");
        let f = FunctionRef::new("burn", None).expect("a valid name");
        let meter = Meter::default();
        let first = meter.measure_now(vec![(f.clone(), vec![group])]);
        assert!(first[&f].total_memory_bytes > 0.0, "{first:?}");
        assert_eq!(first[&f].cpu, 0.0, "no CPU before a second measurement");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            tokio::time::sleep(MIN_INTERVAL).await;
            let u = meter.measure_now(vec![(f.clone(), vec![group])]);
            assert!(u[&f].total_memory_bytes > 0.0, "{u:?}");
            seen.push(u[&f].cpu);
            if u[&f].cpu > 200.0 {
                break;
            }
            assert!(Instant::now() < deadline, "CPU seen: {seen:?} millicores");
        }
        // A group with no process is measured as nothing, and not remembered.
        child.kill().await.expect("killed");
        let gone = meter.measure_now(vec![(f.clone(), vec![group])]);
        assert_eq!(gone[&f], FunctionUsage::default());
    }
}
