//! The scaling history's memory with 2,000 functions and a full hour of samples, counted by a
//! global allocator (which is why this is a test binary of its own): the figure stated in
//! ARCHITECTURE.md and BENCHMARKS.md. Run it with
//! `cargo nextest run -p sluice-gateway --test scaling_memory --no-capture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sluice_core::FunctionRef;
use sluice_gateway::{SAMPLES, Sample, ScalingHistory};

/// Heap bytes this process holds now.
static HELD: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting what is held.
struct Counting;

fn count(bytes: usize, sign: isize) {
    HELD.fetch_add(
        sign * isize::try_from(bytes).unwrap_or(isize::MAX),
        Ordering::Relaxed,
    );
}

// SAFETY (each method): every call is passed on to the system allocator unchanged, with the
// caller's own guarantees; the count is bookkeeping beside it.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

const FUNCTIONS: usize = 2_000;

/// What the history may hold for 2,000 busy functions: 9,000 bytes each (a ring is 8,640
/// bytes; the rest is the map's share and the function's name).
const BOUND: isize = 2_000 * 9_000;

/// What it may hold for 2,000 idle ones (no rings): 300 bytes each.
const IDLE_BOUND: isize = 2_000 * 300;

/// Records `ticks` full rounds of samples for `functions`, from tick `from`: busy ones with
/// every number changing each tick, idle ones with one replica and nothing else.
fn fill(history: &ScalingHistory, functions: &[FunctionRef], from: u64, ticks: u64, busy: bool) {
    for tick in from..from + ticks {
        let n = u32::try_from(tick).unwrap();
        let sample = if busy {
            Sample {
                replicas: n % 64,
                available_replicas: n % 63,
                in_flight: n,
                held: n % 500,
                started: n * 1_000,
            }
        } else {
            Sample {
                replicas: 1,
                available_replicas: 1,
                ..Sample::default()
            }
        };
        let round = functions.iter().map(|f| (f.clone(), sample)).collect();
        history.record(tick, round);
    }
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[test]
fn two_thousand_functions_with_an_hour_of_samples_stay_within_bound_and_do_not_grow() {
    // Names as long as most: `function-0042.openfaas-fn`.
    let functions: Vec<FunctionRef> = (0..FUNCTIONS)
        .map(|i| FunctionRef::parse(&format!("function-{i:04}"), Some("openfaas-fn")).unwrap())
        .collect();
    let per_function = |bytes: isize| bytes / isize::try_from(FUNCTIONS).unwrap();
    let before = held();
    let history = ScalingHistory::new();
    let hour = SAMPLES as u64;
    let mut tick = 1;
    let mut run = |functions: &[FunctionRef], ticks: u64, busy: bool| {
        fill(&history, functions, tick, ticks, busy);
        tick += ticks;
        held() - before
    };

    // An hour idle: the charts are one sample repeated, and no ring is allocated.
    let idle = run(&functions, hour, false);
    assert!(
        idle <= IDLE_BOUND,
        "{idle} bytes held for idle functions, over {IDLE_BOUND}"
    );
    // An hour busy: every function's ring is full.
    let full = run(&functions, hour, true);
    assert_eq!(history.len(), FUNCTIONS);
    let points = history.points(&functions[7], None).unwrap();
    assert_eq!(points.len(), SAMPLES, "a full hour is kept");
    drop(points);
    assert!(
        full <= BOUND,
        "{full} bytes held, over the bound of {BOUND} bytes"
    );
    // Rings are allocated once: another hour of samples (wrapping every ring) adds nothing.
    let two_hours = run(&functions, hour, true);
    assert_eq!(two_hours, full, "the history grew with time");
    // Half the functions removed: their memory goes back.
    let half = run(&functions[..FUNCTIONS / 2], 1, true);
    assert_eq!(history.len(), FUNCTIONS / 2);
    assert!(
        half <= full / 2 + idle,
        "{half} bytes held for {} functions",
        FUNCTIONS / 2
    );
    // Idle for an hour again: the rings are freed.
    let idle_again = run(&functions[..FUNCTIONS / 2], hour, false);
    assert!(
        idle_again <= idle,
        "{idle_again} bytes held once idle again"
    );
    let points = history.points(&functions[7], None).unwrap();
    assert_eq!(points.len(), SAMPLES);
    assert!(points.iter().all(|p| p.replicas == 1 && p.rps == 0.0));
    drop(points);
    // Printed only now: the first print allocates stdout's buffer.
    println!(
        "scaling history, {FUNCTIONS} functions, an hour of {SAMPLES} samples each: busy \
         {full} bytes ({:.1} MiB, {} bytes a function); idle {idle} bytes ({:.2} MiB, {} \
         bytes a function)",
        mib(full),
        per_function(full),
        mib(idle),
        per_function(idle),
    );
    drop(history);
    assert_eq!(held(), before, "everything is freed with the history");
}
