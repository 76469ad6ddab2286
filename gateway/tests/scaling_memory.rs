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

/// What the history may hold for 2,000 functions: 9,000 bytes each (a ring is 8,640 bytes; the
/// rest is the map's share and the function's name).
const BOUND: isize = 2_000 * 9_000;

/// Records `ticks` full rounds of samples, from tick `from`, every number in use.
fn fill(history: &ScalingHistory, functions: &[FunctionRef], from: u64, ticks: u64) {
    for tick in from..from + ticks {
        let n = u32::try_from(tick).unwrap();
        let round = functions
            .iter()
            .map(|f| {
                let sample = Sample {
                    replicas: n % 64,
                    available_replicas: n % 63,
                    in_flight: n,
                    held: n % 500,
                    started: n * 1_000,
                };
                (f.clone(), sample)
            })
            .collect();
        history.record(tick, round);
    }
}

#[test]
fn two_thousand_functions_with_an_hour_of_samples_stay_within_bound_and_do_not_grow() {
    // Names as long as most: `function-0042.openfaas-fn`.
    let functions: Vec<FunctionRef> = (0..FUNCTIONS)
        .map(|i| FunctionRef::parse(&format!("function-{i:04}"), Some("openfaas-fn")).unwrap())
        .collect();
    let before = held();
    let history = ScalingHistory::new();
    let hour = SAMPLES as u64;
    fill(&history, &functions, 1, hour);
    let full = held() - before;
    assert_eq!(history.len(), FUNCTIONS);
    assert_eq!(
        history.points(&functions[7], None).unwrap().len(),
        SAMPLES,
        "a full hour is kept"
    );
    assert!(
        full <= BOUND,
        "{full} bytes held, over the bound of {BOUND} bytes"
    );
    // Rings are allocated once: another hour of samples (wrapping every ring) adds nothing.
    fill(&history, &functions, hour + 1, hour);
    let after_two_hours = held() - before;
    // Printed only now: the first print allocates stdout's buffer.
    let per_function = full / isize::try_from(FUNCTIONS).unwrap();
    println!(
        "scaling history: {FUNCTIONS} functions, {SAMPLES} samples each: {full} bytes \
         ({:.1} MiB, {per_function} bytes per function)",
        full as f64 / (1024.0 * 1024.0)
    );
    assert_eq!(after_two_hours, full, "the history grew with time");
    assert_eq!(
        history.points(&functions[7], None).unwrap()[0].in_flight,
        u32::try_from(hour + 1).unwrap()
    );
    // Functions removed: their memory goes back.
    let kept = &functions[..FUNCTIONS / 2];
    fill(&history, kept, 2 * hour + 1, 1);
    assert_eq!(history.len(), FUNCTIONS / 2);
    assert!(
        held() - before <= full / 2 + 200_000,
        "{} bytes held for {} functions",
        held() - before,
        FUNCTIONS / 2
    );
    drop(history);
    assert_eq!(held(), before, "everything is freed with the history");
}
