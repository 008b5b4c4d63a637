//! The plan index and Belady order: epochs, stragglers, ranges, and MIN
//! against a brute-force optimum on small random sequences.

use super::*;
use crate::core::cache::plan::parse_plan;
use crate::core::cache::plan::render_plan;
use rand::{Rng, SeedableRng};

fn plan(rank: u32, epoch: u64, paths: &[&str]) -> Plan {
    let items: Vec<_> = paths.iter().map(|p| (p.to_string(), None)).collect();
    parse_plan(render_plan(epoch, rank, &items).as_bytes()).unwrap()
}

/// Resolves every item of a rank's plans: path "fN" is ino N.
fn resolve_all(plans: &mut Plans, rank: u32) {
    let positions: Vec<(u64, Arc<str>)> = plans.ranks[&rank]
        .plans
        .iter()
        .flat_map(|p| {
            p.items
                .iter()
                .enumerate()
                .map(move |(i, it)| (p.base + i as u64, it.path.clone()))
        })
        .collect();
    for (pos, path) in positions {
        let ino = path[1..].parse().unwrap();
        let slot = Slot::Resolved {
            ino,
            start: 0,
            end: WHOLE_FILE_END,
            size_bytes: 1,
        };
        plans.resolve(rank, pos, slot);
    }
}

#[test]
fn next_epoch_follows_and_old_plans_go() {
    let mut p = Plans::default();
    assert_eq!(
        p.install(plan(0, 1, &["f1", "f2"])),
        Installed::New {
            base: 0,
            dropped: 0
        }
    );
    assert_eq!(
        p.install(plan(0, 2, &["f2", "f3"])),
        Installed::New {
            base: 2,
            dropped: 0
        }
    );
    assert_eq!(p.install(plan(0, 2, &["f2", "f3"])), Installed::Unchanged);
    resolve_all(&mut p, 0);
    assert_eq!(
        p.known_path("f3"),
        Some((3, 1)),
        "remembered for later plans"
    );
    assert_eq!(p.next_use(2, 0, 1), 1);
    assert_eq!(p.next_use(3, 0, 1), 3);
    assert_eq!(p.consume(2, 0, 10), Some((0, WHOLE_FILE_END)));
    assert_eq!(p.next_use(2, 0, 1), 2, "the next epoch's read");
    assert_eq!(p.ranks[&0].cursor, 0, "f1 not read yet");
    assert!(p.consume(1, 0, 10).is_some());
    assert_eq!(p.ranks[&0].cursor, 2);
    assert_eq!(p.ranks[&0].plans.len(), 1, "epoch 1 is over");
    assert_eq!(p.next_use(1, 0, 1), NO_USE);
    // A different plan for epoch 2 replaces it and starts at the cursor.
    assert!(matches!(
        p.install(plan(0, 2, &["f9"])),
        Installed::New {
            base: 2,
            dropped: 1
        }
    ));
    assert_eq!(p.next_use(3, 0, 1), NO_USE);
    // Epoch 4 while 2 is held: 2 is too old to be the one before.
    assert!(matches!(
        p.install(plan(0, 4, &["f1"])),
        Installed::New { dropped: 1, .. }
    ));
}

#[test]
fn the_prefetch_scan_goes_a_bounded_lead_into_the_next_plan() {
    let mut p = Plans::default();
    let epoch =
        |e: u64| -> Vec<String> { (0..100).map(|i| format!("f{}", e * 1000 + i)).collect() };
    for e in [1, 2] {
        let names = epoch(e);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        p.install(plan(0, e, &refs));
    }
    resolve_all(&mut p, 0);
    let r = &p.ranks[&0];
    // Epoch 1 is 0..100, epoch 2 100..200: a window of 1000 stops 10
    // items into epoch 2, a window of 50 stops where it says.
    assert_eq!(r.prefetch_limit(1000, 10), 110);
    assert_eq!(r.prefetch_limit(50, 10), 50);
    assert_eq!(r.prefetch_limit(1000, 1000), 200);
    // Halfway through epoch 2 the bound is epoch 2's end (no epoch 3).
    for i in 0..100 {
        p.consume(1000 + i, 0, 10);
    }
    for i in 0..50 {
        p.consume(2000 + i, 0, 10);
    }
    assert_eq!(p.ranks[&0].prefetch_limit(1000, 10), 200);
}

#[test]
fn stragglers_do_not_hold_the_cursor() {
    let mut p = Plans::default();
    let names: Vec<String> = (0..4 * STRAGGLER_ITEMS).map(|i| format!("f{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    p.install(plan(0, 0, &refs));
    resolve_all(&mut p, 0);
    // Item 0 is never read; everything after it is.
    for i in 1..(STRAGGLER_ITEMS + 10) {
        assert!(p.consume(i, 0, 1).is_some(), "item {i}");
    }
    let r = &p.ranks[&0];
    assert!(r.cursor > 0, "cursor moved past the skipped item");
    assert_eq!(r.cursor, STRAGGLER_ITEMS + 10);
    // Reads far ahead of the cursor are not matched to the plan.
    assert_eq!(p.consume(4 * STRAGGLER_ITEMS - 1, 0, 1), None);
}

#[test]
fn a_dropped_plan_does_not_leave_the_cursor_in_a_gap() {
    let mut p = Plans::default();
    let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    p.install(plan(0, 0, &refs));
    p.install(plan(0, 1, &refs));
    resolve_all(&mut p, 0);
    // Epoch 0: item 0 is never read (served elsewhere, or read before its
    // path was resolved); the others are.
    for i in 1..8 {
        assert!(p.consume(i, 0, 1).is_some(), "item {i}");
    }
    assert_eq!(p.ranks[&0].cursor, 0, "held by the unread item");
    // The plan for epoch 2 drops epoch 0's: the cursor must not stay in
    // the positions no plan holds any more.
    p.install(plan(0, 2, &refs));
    resolve_all(&mut p, 0);
    let r = &p.ranks[&0];
    assert_eq!(r.cursor, 8, "at the start of epoch 1");
    assert!(r.locate(r.cursor).is_some());
    // Epoch 1's reads are matched to it again.
    assert_eq!(p.consume(3, 0, 1), Some((0, WHOLE_FILE_END)));
    assert_eq!(p.next_use(3, 0, 1), 16 + 3, "its next read is in epoch 2");
}

#[test]
fn ranges_are_consumed_by_the_read_of_their_first_byte() {
    let mut p = Plans::default();
    let items = vec![
        (
            "f7".to_string(),
            Some(super::super::plan::ByteRange {
                offset: 100,
                len_bytes: 50,
            }),
        ),
        (
            "f7".to_string(),
            Some(super::super::plan::ByteRange {
                offset: 0,
                len_bytes: 100,
            }),
        ),
    ];
    p.install(parse_plan(render_plan(0, 0, &items).as_bytes()).unwrap());
    for (pos, (s, e)) in [(0u64, (100u64, 150u64)), (1, (0, 100))] {
        p.resolve(
            0,
            pos,
            Slot::Resolved {
                ino: 7,
                start: s,
                end: e,
                size_bytes: 150,
            },
        );
    }
    assert_eq!(p.next_use(7, 120, 130), 0);
    assert_eq!(p.next_use(7, 0, 10), 1);
    assert_eq!(p.consume(7, 110, 150), None, "not the first byte");
    assert_eq!(p.consume(7, 96, 150), Some((100, 150)));
    assert_eq!(p.next_use(7, 0, 150), 1);
}

/// Misses of demand paging with `capacity` unit-size slots, using the
/// cache's own plan index, order and admission rule.
fn policy_misses(seq: &[u64], capacity: u64) -> usize {
    let names: Vec<String> = seq.iter().map(|x| format!("f{x}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut plans = Plans::default();
    plans.install(plan(0, 0, &refs));
    resolve_all(&mut plans, 0);
    let mut order = Order::default();
    let mut cached: HashMap<u64, Rank> = HashMap::new();
    let mut misses = 0;
    for (tick, &x) in seq.iter().enumerate() {
        plans.consume(x, 0, 1);
        let rank = Rank {
            next_use: plans.next_use(x, 0, 1),
            last_access: tick as u64,
            id: x,
        };
        if let Some(old) = cached.remove(&x) {
            order.remove(old);
            order.insert(rank);
            cached.insert(x, rank);
            continue;
        }
        misses += 1;
        let free = capacity - cached.len() as u64;
        let victims = if free >= 1 {
            Some(Vec::new())
        } else {
            order.victims(1, rank.next_use, |_| 1)
        };
        if let Some(victims) = victims {
            for v in victims {
                order.remove(cached.remove(&v).unwrap());
            }
            order.insert(rank);
            cached.insert(x, rank);
        }
    }
    misses
}

/// The fewest misses any policy (with bypass) can have.
fn optimal_misses(seq: &[u64], capacity: usize) -> usize {
    fn go(
        seq: &[u64],
        pos: usize,
        cache: Vec<u64>,
        capacity: usize,
        memo: &mut HashMap<(usize, Vec<u64>), usize>,
    ) -> usize {
        if pos == seq.len() {
            return 0;
        }
        if let Some(&m) = memo.get(&(pos, cache.clone())) {
            return m;
        }
        let x = seq[pos];
        let best = if cache.contains(&x) {
            go(seq, pos + 1, cache.clone(), capacity, memo)
        } else {
            let mut best = go(seq, pos + 1, cache.clone(), capacity, memo);
            let mut options = Vec::new();
            if cache.len() < capacity {
                let mut c = cache.clone();
                c.push(x);
                options.push(c);
            } else {
                for i in 0..cache.len() {
                    let mut c = cache.clone();
                    c[i] = x;
                    options.push(c);
                }
            }
            for mut c in options {
                c.sort_unstable();
                best = best.min(go(seq, pos + 1, c, capacity, memo));
            }
            1 + best
        };
        memo.insert((pos, cache), best);
        best
    }
    go(seq, 0, Vec::new(), capacity, &mut HashMap::new())
}

#[test]
fn belady_matches_the_brute_force_optimum() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for round in 0..400 {
        let len = rng.gen_range(1..=13);
        let alphabet = rng.gen_range(1..=6u64);
        let capacity = rng.gen_range(1..=3u64);
        let seq: Vec<u64> = (0..len).map(|_| rng.gen_range(1..=alphabet)).collect();
        assert_eq!(
            policy_misses(&seq, capacity),
            optimal_misses(&seq, capacity as usize),
            "round {round}: {seq:?} with capacity {capacity}"
        );
    }
}

#[test]
fn without_plans_the_order_is_lru() {
    let mut order = Order::default();
    for (id, t) in [(1, 5), (2, 3), (3, 9)] {
        order.insert(Rank {
            next_use: NO_USE,
            last_access: t,
            id,
        });
    }
    assert_eq!(order.victims(2, NO_USE, |_| 1), Some(vec![2, 1]));
    // A planned range may evict unplanned ones, never the reverse.
    order.insert(Rank {
        next_use: 4,
        last_access: 0,
        id: 9,
    });
    assert_eq!(order.victims(4, 3, |_| 1), Some(vec![2, 1, 3, 9]));
    assert_eq!(order.victims(4, 4, |_| 1), None);
    assert_eq!(order.victims(1, 10, |_| 1), Some(vec![2]));
}
