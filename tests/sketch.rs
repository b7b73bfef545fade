//! Sketch identities (DESIGN.md §2): the CPU backend's factors equal the explicit per-sequence sums, and
//! shards merged with `Factors::merge` equal one pass over all the data.

use yaqa::core::sketch::{Factors, SketchKind};
use yaqa::core::{Mat, SymMat, synthetic};
use yaqa::cpu::Cpu;

/// Two sequences of structured activations and gradients for an `m × n` layer.
fn sequences(m: usize, n: usize, count: usize) -> Vec<(Mat<f32>, Mat<f32>)> {
    (0..count as u64)
        .map(|s| {
            (
                synthetic::activations(40 + 8 * s as usize, n, 0.8, s),
                synthetic::activations(40 + 8 * s as usize, m, 1.0, 100 + s),
            )
        })
        .collect()
}

fn rel(a: &SymMat, b: &SymMat) -> f64 {
    yaqa::core::mat::rel_diff_fro(&a.data, &b.data)
}

#[test]
fn sketch_b_equals_explicit_per_sequence_sums() {
    let (m, n) = (24, 32);
    let seqs = sequences(m, n, 3);
    let mut factors = Factors::sketch_b(m, n);
    let mut want_in = SymMat::zeros(n);
    let mut want_out = SymMat::zeros(m);
    for (x, g) in &seqs {
        factors.add_sequence(&Cpu::default(), x, Some(g)).unwrap();
        // G_b = Σ_t g_t x_tᵀ, in f64.
        let grad = Mat::from_fn(m, n, |a, b| {
            (0..x.rows)
                .map(|t| g.at(t, a) as f64 * x.at(t, b) as f64)
                .sum::<f64>()
        });
        for i in 0..n {
            for j in 0..=i {
                *want_in.at_mut(i, j) += (0..m).map(|a| grad.at(a, i) * grad.at(a, j)).sum::<f64>();
            }
        }
        for a in 0..m {
            for c in 0..=a {
                *want_out.at_mut(a, c) +=
                    (0..n).map(|b| grad.at(a, b) * grad.at(c, b)).sum::<f64>();
            }
        }
    }
    assert_eq!(factors.n_seqs, 3);
    assert_eq!(factors.n_tokens, 40 + 48 + 56);
    assert!(
        rel(&factors.h_in, &want_in) < 1e-5,
        "h_in {}",
        rel(&factors.h_in, &want_in)
    );
    assert!(rel(factors.h_out.as_ref().unwrap(), &want_out) < 1e-5);
}

#[test]
fn merged_shards_equal_one_pass() {
    let (m, n) = (24, 32);
    let seqs = sequences(m, n, 6);
    let cpu = Cpu::default();
    for start in [
        Factors::sketch_b(m, n),
        Factors::xtx(n),
        Factors::sketch_a_start(n),
    ] {
        let mut whole = start.clone();
        let mut first = start.clone();
        let mut second = start.clone();
        for (i, (x, g)) in seqs.iter().enumerate() {
            whole.add_sequence(&cpu, x, Some(g)).unwrap();
            if i % 2 == 0 { &mut first } else { &mut second }
                .add_sequence(&cpu, x, Some(g))
                .unwrap();
        }
        first.merge(&second).unwrap();
        assert_eq!(first.n_seqs, whole.n_seqs);
        assert_eq!(first.n_tokens, whole.n_tokens);
        // Only the order of f64 additions differs.
        assert!(rel(&first.h_in, &whole.h_in) < 1e-13, "{:?}", start.kind);
        if let (Some(a), Some(b)) = (&first.h_out, &whole.h_out) {
            assert!(rel(a, b) < 1e-13);
        }
    }
}

#[test]
fn sketch_a_power_iteration_passes_merge_and_alternate() {
    let (m, n) = (24, 32);
    let seqs = sequences(m, n, 4);
    let cpu = Cpu::default();
    let mut pass = Factors::sketch_a_start(n);
    for (x, _) in &seqs {
        pass.add_sequence(&cpu, x, None).unwrap();
    }
    for p in 1..=4u32 {
        let start = pass.next_sketch_a_pass(m).unwrap();
        assert_eq!(start.kind, SketchKind::A { pass: p });
        let (mut a, mut b) = (start.clone(), start.clone());
        let mut whole = start.clone();
        for (i, (x, g)) in seqs.iter().enumerate() {
            whole.add_sequence(&cpu, x, Some(g)).unwrap();
            if i < 2 { &mut a } else { &mut b }
                .add_sequence(&cpu, x, Some(g))
                .unwrap();
        }
        a.merge(&b).unwrap();
        assert!(rel(&a.h_in, &whole.h_in) < 1e-13);
        assert!(rel(a.h_out.as_ref().unwrap(), whole.h_out.as_ref().unwrap()) < 1e-13);
        // Odd passes refresh h_out and keep h_in; even passes the reverse.
        if p % 2 == 1 {
            assert_eq!(whole.h_in, pass.h_in);
        } else {
            assert_eq!(whole.h_out, pass.h_out);
        }
        pass = whole;
    }
    // Shards started from different fixed sides must not merge.
    let mut other = Factors::sketch_a_start(n);
    other.add_sequence(&cpu, &seqs[0].0, None).unwrap();
    let mut x = pass.clone();
    let mut y = pass.clone();
    y.h_out = Some(SymMat::identity(m));
    assert!(x.merge(&y).is_err());
    assert!(x.merge(&other).is_err());
}

#[test]
fn bad_sequences_are_rejected() {
    let (m, n) = (8, 16);
    let cpu = Cpu::default();
    let mut f = Factors::sketch_b(m, n);
    let x = synthetic::activations(10, n, 1.0, 1);
    let g = synthetic::activations(10, m, 1.0, 2);
    assert!(
        f.add_sequence(&cpu, &x, None).is_err(),
        "sketch B without gradients"
    );
    let short = synthetic::activations(9, m, 1.0, 3);
    assert!(
        f.add_sequence(&cpu, &x, Some(&short)).is_err(),
        "token counts differ"
    );
    let mut nan = x.clone();
    nan.data[3] = f32::NAN;
    let err = f
        .add_sequence(&cpu, &nan, Some(&g))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-finite") && err.contains("layer input"),
        "{err}"
    );
    assert_eq!(f.n_seqs, 0, "a rejected sequence must not be counted");
}

#[test]
fn a_partial_sum_continues_from_its_pass_start() {
    // What a checkpointed collection relies on: a partial sum carries its own start, so continuing it
    // from there over the remaining sequences gives the sum over all of them, bit for bit.
    let (m, n) = (24, 32);
    let seqs = sequences(m, n, 4);
    let cpu = Cpu::default();
    let mut p0 = Factors::sketch_a_start(n);
    for (x, _) in &seqs {
        p0.add_sequence(&cpu, x, None).unwrap();
    }
    let p1 = p0.next_sketch_a_pass(m).unwrap();
    let mut p1_done = p1.clone();
    for (x, g) in &seqs {
        p1_done.add_sequence(&cpu, x, Some(g)).unwrap();
    }
    let p2 = p1_done.next_sketch_a_pass(m).unwrap();
    for start in [
        Factors::sketch_b(m, n),
        Factors::xtx(n),
        p0.pass_start(),
        p1,
        p2,
    ] {
        let mut whole = start.clone();
        let mut part = start.clone();
        for (i, (x, g)) in seqs.iter().enumerate() {
            whole.add_sequence(&cpu, x, Some(g)).unwrap();
            if i < 2 {
                part.add_sequence(&cpu, x, Some(g)).unwrap();
            }
        }
        assert!(
            part.same_start(&start) && whole.same_start(&part),
            "{:?}",
            start.kind
        );
        assert_eq!(part.pass_start(), start, "{:?}", start.kind);
        let mut resumed = part.clone();
        for (x, g) in &seqs[2..] {
            resumed.add_sequence(&cpu, x, Some(g)).unwrap();
        }
        assert_eq!(resumed, whole, "{:?}", start.kind);
    }
    // Another fixed side, another pass or another sketch is not the same start.
    let p1 = p0.next_sketch_a_pass(m).unwrap();
    let mut other = p1.clone();
    other.h_in = SymMat::identity(n);
    assert!(!p1.same_start(&other));
    assert!(!p1.same_start(&p1_done.next_sketch_a_pass(m).unwrap()));
    assert!(!Factors::sketch_b(m, n).same_start(&Factors::xtx(n)));
}

/// `Factors::mix`: the ends of the blend are the normalised inputs, the middle is their mean entry by
/// entry (computed here from the dense matrices), the result's mean diagonal is 1 on both sides, and
/// factors that cannot be blended are refused.
#[test]
fn blended_factors_are_the_mean_of_the_normalised_estimates() {
    let (m, n) = (12, 16);
    let cpu = Cpu::default();
    let collect = |seed: u64| {
        let mut f = Factors::sketch_b(m, n);
        for (x, g) in sequences(m, n, 3).iter().skip(seed as usize) {
            f.add_sequence(&cpu, x, Some(g)).unwrap();
        }
        f
    };
    let (a, b) = (collect(0), collect(1));
    let normalised = |h: &SymMat| {
        let mut h = h.clone();
        let mean = h.mean_diag();
        h.scale(1.0 / mean);
        h
    };
    let ends = [
        (
            1.0,
            normalised(&a.h_in),
            normalised(a.h_out.as_ref().unwrap()),
        ),
        (
            0.0,
            normalised(&b.h_in),
            normalised(b.h_out.as_ref().unwrap()),
        ),
    ];
    for (w, want_in, want_out) in ends {
        let mixed = Factors::mix(&a, &b, w).unwrap();
        assert!(rel(&mixed.h_in, &want_in) < 1e-15, "w = {w}");
        assert!(
            rel(mixed.h_out.as_ref().unwrap(), &want_out) < 1e-15,
            "w = {w}"
        );
    }
    let mixed = Factors::mix(&a, &b, 0.5).unwrap();
    let (ai, bi) = (
        normalised(&a.h_in).to_dense(),
        normalised(&b.h_in).to_dense(),
    );
    let dense = mixed.h_in.to_dense();
    for i in 0..n {
        for j in 0..n {
            let want = 0.5 * (ai.at(i, j) + bi.at(i, j));
            assert!((dense.at(i, j) - want).abs() <= 1e-14 * want.abs().max(1.0));
        }
    }
    assert!((mixed.h_in.mean_diag() - 1.0).abs() < 1e-14);
    assert!((mixed.h_out.as_ref().unwrap().mean_diag() - 1.0).abs() < 1e-14);
    assert_eq!(mixed.xtx, b.xtx);
    assert_eq!(mixed.kind, b.kind);

    assert!(Factors::mix(&a, &b, 1.5).is_err());
    let xtx = Factors::xtx(n);
    assert!(Factors::mix(&xtx, &b, 0.5).is_err(), "no h_out");
    let other = Factors::sketch_b(m, n + 1);
    assert!(Factors::mix(&a, &other, 0.5).is_err(), "shapes");
    let empty = Factors::sketch_b(m, n);
    assert!(Factors::mix(&a, &empty, 0.5).is_err(), "mean diagonal 0");
}
