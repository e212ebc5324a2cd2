#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::gzip::gunzip;
use crate::pprof::{decode_plain, string_at};

fn testdata() -> Option<PathBuf> {
    flamedb_testkit::testdata("jfr")
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    gunzip(&std::fs::read(dir.join(name)).unwrap(), 1 << 30).unwrap()
}

type Stacks = BTreeMap<Vec<String>, i64>;

/// The stacks of an expected pprof (root first), by function name.
fn expected_stacks(dir: &std::path::Path, name: &str) -> Stacks {
    let profile = decode_plain(&read(dir, name)).unwrap();
    let function_of = |location_id: u64| -> String {
        let location = profile
            .location
            .iter()
            .find(|location| location.id == location_id)
            .unwrap();
        let function_id = location.line[0].function_id;
        let function = profile
            .function
            .iter()
            .find(|function| function.id == function_id)
            .unwrap();
        string_at(&profile, function.name).to_owned()
    };
    let mut stacks = Stacks::new();
    for sample in &profile.sample {
        let mut frames: Vec<String> = sample.location_id.iter().map(|&id| function_of(id)).collect();
        frames.reverse();
        *stacks.entry(frames).or_insert(0) += sample.value[0];
    }
    stacks
}

/// Fails with the first stacks that differ.
fn assert_same(ours: &Stacks, expected: &Stacks) {
    // Up to four stacks of `a` that `b` lacks or values otherwise.
    let not_in = |a: &Stacks, b: &Stacks| -> Vec<(Vec<String>, i64)> {
        a.iter()
            .filter(|(stack, value)| b.get(*stack) != Some(value))
            .map(|(stack, value)| (stack.clone(), *value))
            .take(4)
            .collect()
    };
    let missing = not_in(expected, ours);
    let extra = not_in(ours, expected);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} stacks ours, {} expected; total {} vs {}\nexpected, not ours: {missing:?}\nours, not expected: {extra:?}",
        ours.len(),
        expected.len(),
        ours.values().sum::<i64>(),
        expected.values().sum::<i64>()
    );
}

/// Our CPU stacks of the contexts `keep` accepts, each sample 10 ms.
fn stacks(recording: &Recording, keep: impl Fn(i64) -> bool) -> Stacks {
    let mut stacks = Stacks::new();
    for ((kind, context, stack), totals) in &recording.samples {
        if *kind == SampleKind::Cpu && keep(*context) {
            let names = recording.stacks[*stack]
                .iter()
                .map(|&id| recording.names[id as usize].clone())
                .collect();
            *stacks.entry(names).or_insert(0) += totals.events as i64 * 10_000_000;
        }
    }
    stacks
}

/// Events of `kind` in `recording`.
fn events(recording: &Recording, kind: SampleKind) -> u64 {
    recording
        .samples
        .iter()
        .filter(|((of, ..), _)| *of == kind)
        .map(|(_, totals)| totals.events)
        .sum()
}

#[test]
fn test_testdata_cpu_samples_match_what_pyroscope_makes_of_them() {
    let Some(dir) = testdata() else { return };
    let kafka = parse(&read(&dir, "cortex-dev-01__kafka-0__cpu__0.jfr.gz")).unwrap();
    assert_eq!(events(&kafka, SampleKind::Cpu), 478);
    assert_eq!(
        kafka.samples.len(),
        kafka
            .samples
            .keys()
            .filter(|(kind, ..)| *kind == SampleKind::Cpu)
            .count()
    );
    assert_eq!(kafka.event.as_deref(), Some("cpu"));
    assert_same(
        &stacks(&kafka, |_| true),
        &expected_stacks(
            &dir,
            "cortex-dev-01__kafka-0__cpu__0.jfr.gz.process_cpu_cpu_nanoseconds_cpu_nanoseconds.17241709254077376921.pb.gz",
        ),
    );

    // Async-profiler contexts: all of them together, and each labelled
    // one on its own.
    let dump = parse(&read(&dir, "dump1.jfr.gz")).unwrap();
    assert_eq!(dump.event.as_deref(), Some("itimer"));
    assert_same(
        &stacks(&dump, |_| true),
        &expected_stacks(
            &dir,
            "dump1.jfr.gz.process_cpu_cpu_nanoseconds_cpu_nanoseconds.17241709254077376921.pb.gz",
        ),
    );
    let mut labelled: Vec<Stacks> = (1..=4).map(|context| stacks(&dump, |c| c == context)).collect();
    let mut expected: Vec<Stacks> = [
        "15666661103234080825",
        "16370823494798218517",
        "2539015855607244867",
        "5571933481434853072",
    ]
    .iter()
    .map(|hash| {
        expected_stacks(
            &dir,
            &format!("dump1.jfr.gz.process_cpu_cpu_nanoseconds_cpu_nanoseconds.{hash}.pb.gz"),
        )
    })
    .collect();
    labelled.sort();
    expected.sort();
    assert_eq!(labelled, expected);
}

#[test]
fn test_generated_classes_lose_their_counter() {
    for (class, expected) in [
        ("App$$Lambda$75.0x0000000800c22a28", "App$$Lambda_"),
        (
            "kafka/log/LogValidator$$$Lambda$1377.0x000000080156f840",
            "kafka/log/LogValidator$$$Lambda_",
        ),
        ("App$$Lambda/0x0000000800c22a28", "App$$Lambda_"),
        (
            "java/lang/invoke/LambdaForm$DMH.0x0000000801578c00",
            "java/lang/invoke/LambdaForm$DMH.0x0000000801578c00",
        ),
        ("App$$Lambda$75", "App$$Lambda$75"),
        ("java/lang/Thread", "java/lang/Thread"),
        (
            "jdk/internal/reflect/GeneratedMethodAccessor2",
            "jdk/internal/reflect/GeneratedMethodAccessor_",
        ),
        (
            "jdk/internal/reflect/GeneratedConstructorAccessor17",
            "jdk/internal/reflect/GeneratedConstructorAccessor17",
        ),
        ("Main$$Lambda$1/1831932724", "Main$$Lambda_"),
        ("Foo$$Lambda123", "Foo$$Lambda_"),
        (
            "App$$Lambda$75.0x0000000800c22a28$Inner",
            "App$$Lambda$75.0x0000000800c22a28$Inner",
        ),
        ("a/GeneratedMethodAccessorX", "a/GeneratedMethodAccessorX"),
    ] {
        assert_eq!(without_generated_suffix(class), expected, "{class}");
    }
}

#[test]
fn test_a_file_without_the_magic_is_refused() {
    assert_eq!(parse(b"not a jfr").unwrap_err(), JfrError::Magic { offset: 0 });
}

#[test]
fn test_testdata_damaged_files_are_refused_not_trusted() {
    let Some(dir) = testdata() else { return };
    let good = read(&dir, "dump1.jfr.gz");
    // Cut anywhere, or with a byte changed: an error or fewer samples
    // than the file holds, never more, never a panic.
    let events = |recording: &Recording| -> u64 { recording.samples.values().map(|totals| totals.events).sum() };
    let full = events(&parse(&good).unwrap());
    assert!(full > 0);
    assert_eq!(events(&parse(&good[..0]).unwrap()), 0);
    let step = good.len() / 12;
    let mut refused = 0;
    for cut in (step..good.len()).step_by(step) {
        match parse(&good[..cut]) {
            Err(_) => refused += 1,
            Ok(recording) => assert!(
                events(&recording) < full,
                "cut at {cut}: {} of {full} events",
                events(&recording)
            ),
        }
    }
    assert!(refused > 0, "no cut was refused");
    for at in (step / 2..good.len()).step_by(step) {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        if let Ok(recording) = parse(&bad) {
            assert!(
                events(&recording) <= full,
                "byte {at} changed: {} of {full} events",
                events(&recording)
            );
        }
    }
}

fn kinds(recording: &Recording) -> BTreeMap<(SampleKind, i64, Vec<String>), (u64, i64)> {
    recording
        .samples
        .iter()
        .map(|((kind, context, stack), totals)| {
            let names = recording.stacks[*stack]
                .iter()
                .map(|&id| recording.names[id as usize].clone())
                .collect();
            ((*kind, *context, names), (totals.events, totals.amount))
        })
        .collect()
}

#[test]
fn test_allocation_lock_park_live_and_malloc_events_are_read() {
    use super::synthetic::{Event, FieldValue::*, recording};
    let stacks: &[&[&str]] = &[&["App.alloc", "App.main"], &["Lock.wait", "App.main"]];
    let event = |name, stack, fields| Event { name, stack, fields };
    let file = recording(
        "cpu",
        // Ticks of 10 ns.
        100_000_000,
        stacks,
        &[
            event(
                "jdk.ObjectAllocationInNewTLAB",
                1,
                vec![
                    ("allocationSize", Long(24)),
                    ("tlabSize", Long(4096)),
                    ("contextId", Long(7)),
                ],
            ),
            event(
                "jdk.ObjectAllocationInNewTLAB",
                1,
                vec![
                    ("allocationSize", Long(32)),
                    ("tlabSize", Long(1024)),
                    ("contextId", Long(7)),
                ],
            ),
            event(
                "jdk.ObjectAllocationOutsideTLAB",
                1,
                vec![("allocationSize", Long(1 << 20))],
            ),
            event("jdk.ObjectAllocationSample", 1, vec![("weight", Long(512))]),
            event("jdk.JavaMonitorEnter", 2, vec![("duration", Long(300))]),
            event("jdk.ThreadPark", 2, vec![("duration", Long(5))]),
            event("profiler.LiveObject", 1, vec![("allocationSize", Long(64))]),
            event("profiler.Malloc", 1, vec![("size", Long(100))]),
        ],
    );
    let recording = parse(&file).unwrap();
    let alloc = vec!["App.main".to_owned(), "App.alloc".to_owned()];
    let lock = vec!["App.main".to_owned(), "Lock.wait".to_owned()];
    let expected = BTreeMap::from([
        ((SampleKind::AllocInNewTlab, 7, alloc.clone()), (2, 5120)),
        ((SampleKind::AllocOutsideTlab, 0, alloc.clone()), (1, 1 << 20)),
        ((SampleKind::AllocSample, 0, alloc.clone()), (1, 512)),
        // Durations in ticks of 10 ns become nanoseconds.
        ((SampleKind::Lock, 0, lock.clone()), (1, 3000)),
        ((SampleKind::Park, 0, lock.clone()), (1, 50)),
        ((SampleKind::Live, 0, alloc.clone()), (1, 0)),
        ((SampleKind::Malloc, 0, alloc.clone()), (1, 100)),
    ]);
    assert_eq!(kinds(&recording), expected);
    assert_eq!(recording.event.as_deref(), Some("cpu"));
}

#[test]
fn test_wall_clock_recordings_count_every_sample_as_wall_and_running_ones_as_cpu() {
    use super::synthetic::{Event, FieldValue::*, recording};
    let stacks: &[&[&str]] = &[&["Thread.sleep", "App.main"], &["App.work", "App.main"]];
    let sample = |stack, state| Event {
        name: "jdk.ExecutionSample",
        stack,
        fields: vec![("state", State(state)), ("contextId", Long(0))],
    };
    let events = [
        sample(1, "STATE_SLEEPING"),
        sample(1, "STATE_SLEEPING"),
        sample(2, "STATE_RUNNABLE"),
    ];
    let sleep = vec!["App.main".to_owned(), "Thread.sleep".to_owned()];
    let work = vec!["App.main".to_owned(), "App.work".to_owned()];
    let wall = parse(&recording("wall", 1_000_000_000, stacks, &events)).unwrap();
    assert_eq!(
        kinds(&wall),
        BTreeMap::from([
            ((SampleKind::Wall, 0, sleep.clone()), (2, 0)),
            ((SampleKind::Wall, 0, work.clone()), (1, 0)),
            ((SampleKind::Cpu, 0, work.clone()), (1, 0)),
        ])
    );
    // A CPU recording: sleeping samples are not CPU, and nothing is wall.
    let cpu = parse(&recording("itimer", 1_000_000_000, stacks, &events)).unwrap();
    assert_eq!(
        kinds(&cpu),
        BTreeMap::from([((SampleKind::Cpu, 0, work.clone()), (1, 0))])
    );
    // async-profiler's own wall-clock samples, several per event.
    let batched = Event {
        name: "profiler.WallClockSample",
        stack: 1,
        fields: vec![("samples", Int(3))],
    };
    let wall = parse(&recording("wall", 1_000_000_000, stacks, &[batched])).unwrap();
    assert_eq!(kinds(&wall), BTreeMap::from([((SampleKind::Wall, 0, sleep), (3, 0))]));
}
