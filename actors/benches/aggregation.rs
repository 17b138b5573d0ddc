#![allow(unsafe_code)] // the counting allocator
//! Aggregation benchmarks.
//!
//! Channel events per second through all four levels (channel→site→well→plate→experiment)
//! on one core:
//! - `hierarchy/four-levels/4-plates-shuffled`: the small case, 4 plates arriving one
//!   after another, each plate's images shuffled: about 1,200 sites open at a time;
//! - `hierarchy/four-levels/lab-400-plates`: what a lab holds, 400 plates of 10
//!   experiments shuffled as a whole (plates out of order and interleaved), 1% of the
//!   images delivered twice, and 2 of the experiments' layouts arriving only halfway
//!   through: hundreds of thousands of sites open at once, and every duplicate checked
//!   against the closed aggregates.
//!
//! Before criterion runs, the bytes of memory held per open site (a site with 5 of its 6
//! channels in), measured with a counting allocator, on 100,000 sites.
//!
//! Run: `cargo bench -p wellspring-actors --bench aggregation` (`-- lab` for the large
//! case alone).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{BatchSize, Criterion, Throughput};
use rustc_hash::FxHashMap;
use wellspring_actors::aggregation::{
    Aggregator, AggregatorConfig, Hierarchy, LevelOutput, SiteLevel,
};
use wellspring_protocol::{ChannelImage, ExperimentId, ExperimentLayout, synthetic};

/// Counts live heap bytes, to measure memory per open aggregate, on the allocator the
/// binaries run on (mimalloc, with their settings).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { wellspring_allocator::Allocator.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { wellspring_allocator::Allocator.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { wellspring_allocator::Allocator.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn layouts(layout: &ExperimentLayout) -> FxHashMap<ExperimentId, Arc<ExperimentLayout>> {
    let mut map = FxHashMap::default();
    map.insert(layout.experiment.clone(), Arc::new(layout.clone()));
    map
}

/// Shuffles within each plate: plates arrive whole but their images in any order.
fn shuffled(mut images: Vec<ChannelImage>, per_plate: usize) -> Vec<ChannelImage> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in images.chunks_mut(per_plate) {
        for i in (1..chunk.len()).rev() {
            chunk.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
        }
    }
    images
}

fn memory_per_open_site() {
    const SITES: usize = 100_000;
    // 100,000 sites: 25,000 wells of 4 sites; spread over plates of 308 wells.
    let layout =
        synthetic::layout("EXP-MEM", (SITES / 4 / 308 + 1) as u32, 308, 4, 6).expect("layout");
    let known = layouts(&layout);
    // Everything allocated from here on and still live after the images were consumed is
    // held by the aggregator (the images' buffer itself is freed by the loop).
    let before = LIVE.load(Ordering::Relaxed);
    let images: Vec<ChannelImage> = synthetic::images(&layout, "HUVEC")
        .into_iter()
        .filter(|i| i.key.channel != 6)
        .take(SITES * 5)
        // Each with texts of its own, as decoding gives them.
        .map(|i| ChannelImage {
            cell_type: Arc::from(&*i.cell_type),
            plate_barcode: Arc::from(&*i.plate_barcode),
            ..i
        })
        .collect();
    let mut out = Vec::new();
    let mut aggregator = Aggregator::<SiteLevel>::new(AggregatorConfig::default());
    for image in images {
        aggregator
            .ingest(image, &known, 0, &mut out)
            .expect("ingest");
    }
    let _ = aggregator.take_changes();
    let after = LIVE.load(Ordering::Relaxed);
    let open = aggregator.open_count();
    println!(
        "memory per open site (5 of 6 channels in, {open} open sites): {} bytes",
        (after - before) / open as isize
    );
    drop(aggregator);
}

fn hierarchy_throughput(c: &mut Criterion) {
    let plates = 4;
    let layout = synthetic::layout("EXP-BENCH", plates, 308, 4, 6).expect("layout");
    let known = layouts(&layout);
    let per_plate = 308 * 4 * 6;
    let images = shuffled(synthetic::images(&layout, "HUVEC"), per_plate);
    let mut group = c.benchmark_group("hierarchy");
    group.throughput(Throughput::Elements(images.len() as u64));
    group.sample_size(20);
    group.bench_function("four-levels/4-plates-shuffled", |b| {
        b.iter_batched(
            || (images.clone(), Hierarchy::new(AggregatorConfig::default())),
            |(images, mut hierarchy)| {
                let mut emitted = 0usize;
                let mut sink = |_: LevelOutput<'_>| emitted += 1;
                for image in images {
                    let _ = hierarchy.ingest(image, &known, 0, &mut sink);
                }
                assert_eq!(emitted, 4 * 308 * 4 + 4 * 308 + 4 + 1);
                hierarchy
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The lab's working set: its images in arrival order, the layouts known from the start,
/// those that arrive halfway (at `late_at`), and how many aggregates must come out.
struct LabWorkload {
    images: Vec<ChannelImage>,
    known: FxHashMap<ExperimentId, Arc<ExperimentLayout>>,
    late: Vec<Arc<ExperimentLayout>>,
    late_at: usize,
    aggregates: usize,
}

const LAB_EXPERIMENTS: u32 = 10;
const LAB_PLATES_EACH: u32 = 40;
const LAB_LATE_EXPERIMENTS: u32 = 2;

/// One xorshift step: the workload is the same on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn lab_workload() -> LabWorkload {
    let mut images = Vec::new();
    let mut known = FxHashMap::default();
    let mut late = Vec::new();
    let mut aggregates = 0;
    for e in 0..LAB_EXPERIMENTS {
        let layout =
            synthetic::layout(&format!("EXP-LAB-{e}"), LAB_PLATES_EACH, 308, 4, 6).expect("layout");
        images.extend(synthetic::images(&layout, "HUVEC"));
        aggregates += LAB_PLATES_EACH as usize * (308 * 4 + 308 + 1) + 1;
        let layout = Arc::new(layout);
        if e < LAB_LATE_EXPERIMENTS {
            late.push(layout);
        } else {
            known.insert(layout.experiment.clone(), layout);
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let repeats: Vec<ChannelImage> = (0..images.len() / 100)
        .map(|_| images[(next(&mut state) % images.len() as u64) as usize].clone())
        .collect();
    images.extend(repeats);
    for i in (1..images.len()).rev() {
        images.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
    }
    LabWorkload {
        late_at: images.len() / 2,
        images,
        known,
        late,
        aggregates,
    }
}

fn lab_throughput(c: &mut Criterion) {
    let lab = lab_workload();
    let mut group = c.benchmark_group("hierarchy");
    group.throughput(Throughput::Elements(lab.images.len() as u64));
    group.sample_size(10);
    group.bench_function("four-levels/lab-400-plates", |b| {
        b.iter_batched(
            || {
                (
                    lab.images.clone(),
                    lab.known.clone(),
                    Hierarchy::new(AggregatorConfig::default()),
                )
            },
            |(images, mut known, mut hierarchy)| {
                // Aggregates only: a rejection or an incomplete report would be a defect.
                let mut emitted = 0usize;
                let mut sink = |output: LevelOutput<'_>| {
                    if !matches!(
                        output,
                        LevelOutput::Incomplete(_) | LevelOutput::Rejected { .. }
                    ) {
                        emitted += 1;
                    }
                };
                for (i, image) in images.into_iter().enumerate() {
                    if i == lab.late_at {
                        for layout in &lab.late {
                            known.insert(layout.experiment.clone(), layout.clone());
                            hierarchy.layout_arrived(&layout.experiment, &known, 0, &mut sink);
                        }
                    }
                    let _ = hierarchy.ingest(image, &known, 0, &mut sink);
                }
                assert_eq!(emitted, lab.aggregates);
                hierarchy
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn main() {
    wellspring_allocator::configure();
    let lab_only = std::env::args().any(|a| a == "lab");
    if !lab_only {
        memory_per_open_site();
    }
    let mut criterion = Criterion::default().configure_from_args();
    if !lab_only {
        hierarchy_throughput(&mut criterion);
    }
    lab_throughput(&mut criterion);
    criterion.final_summary();
}
