//! Hadamard-type orthogonal transforms for incoherence processing (DESIGN.md §3.2).
//!
//! Real layer sizes are rarely powers of two (576, 1536, 11008, 14336 = 28·512), so the rotation of
//! dimension `n = k·2^p` is `R_n = (H_k ⊗ H_{2^p}) / √n`: a small ±1 "base" Hadamard matrix `H_k` of order
//! `k` (Sylvester, Paley I or Paley II over a finite field GF(q), or a Sylvester doubling of one of them)
//! Kronecker-multiplied with the Sylvester matrix `H_{2^p}`. A [`HadamardPlan`] picks the smallest such `k`
//! and holds `H_k`; backends apply `R_n` in `O(n log n + n·k)` per vector (Walsh–Hadamard butterflies along
//! the `2^p` axis, a dense `k × k` mix along the other), and the f64 reference builds `R_n` entry by entry
//! from [`HadamardPlan::entry`]. Index convention: vector index `i = a·2^p + b` with `a < k` the base index
//! and `b < 2^p` the Sylvester index, so `R[i, j] = H_k[a, c] · H_{2^p}[b, d] / √n` for `j = c·2^p + d`.
//!
//! The Paley constructions need the quadratic character of GF(q) for prime powers `q = p^e` (11008 =
//! 344·32 needs Paley I over GF(7³)), so this file carries a small GF(p^e) arithmetic whose irreducible
//! polynomial is found by search. Everything here is deterministic: the same `n` always gives the same
//! matrix, which is part of the recorded rotation (the snapshots in `snapshots/` pin it).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{CoreError, Result};
use crate::rng::Rng;

/// Largest base order `k` a plan will use. The dense `k × k` mix costs `n·k` per vector, so beyond this the
/// transform stops being "fast", and the Paley tables (`k²` entries) grow large; every real model size
/// listed in DESIGN.md needs at most 344.
pub const MAX_BASE_ORDER: usize = 1024;

/// How a base Hadamard matrix was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Construction {
    /// Sylvester's `H_{2^a}[i, j] = (−1)^{popcount(i & j)}`; order 1 is `[1]`.
    Sylvester,
    /// Paley I over GF(q), `q = p^e ≡ 3 (mod 4)`: order `q + 1`, `H = I + [[0, 1ᵀ], [−1, Q]]` with the
    /// Jacobsthal matrix `Q[i, j] = χ(x_i − x_j)`.
    PaleyI { p: usize, e: u32 },
    /// Paley II over GF(q), `q = p^e ≡ 1 (mod 4)`: order `2(q + 1)`, the symmetric conference matrix
    /// `C = [[0, 1ᵀ], [1, Q]]` with each 0 replaced by `[[1, −1], [−1, −1]]` and each ±1 by `±[[1, 1], [1, −1]]`.
    PaleyII { p: usize, e: u32 },
    /// `[[H, H], [H, −H]]` of a smaller construction.
    Doubled(Box<Construction>),
}

/// A `k × k` matrix of ±1 entries with `H Hᵀ = k I`, row-major.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseMatrix {
    order: usize,
    construction: Construction,
    entries: Vec<i8>,
}

impl BaseMatrix {
    /// The order `k`.
    pub fn order(&self) -> usize {
        self.order
    }

    /// How the matrix was built.
    pub fn construction(&self) -> &Construction {
        &self.construction
    }

    /// The `k²` entries (each ±1), row-major.
    pub fn entries(&self) -> &[i8] {
        &self.entries
    }

    /// Entry `(row, col)`, ±1.
    #[inline]
    pub fn at(&self, row: usize, col: usize) -> i8 {
        self.entries[row * self.order + col]
    }

    /// Whether `H Hᵀ = k I` holds exactly (integer arithmetic) and every entry is ±1. `O(k³)`.
    pub fn is_hadamard(&self) -> bool {
        let k = self.order;
        if self.entries.len() != k * k || self.entries.iter().any(|&v| v != 1 && v != -1) {
            return false;
        }
        for i in 0..k {
            let ri = &self.entries[i * k..(i + 1) * k];
            for j in i..k {
                let rj = &self.entries[j * k..(j + 1) * k];
                let dot: i32 = ri.iter().zip(rj).map(|(&a, &b)| a as i32 * b as i32).sum();
                let want = if i == j { k as i32 } else { 0 };
                if dot != want {
                    return false;
                }
            }
        }
        true
    }

    /// The matrix as text, one row per line, `+` for 1 and `-` for −1 (for snapshots and debugging).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.order * (self.order + 1));
        for row in self.entries.chunks(self.order.max(1)) {
            out.extend(row.iter().map(|&v| if v > 0 { '+' } else { '-' }));
            out.push('\n');
        }
        out
    }
}

impl fmt::Debug for BaseMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The entries are elided: a 344 × 344 matrix printed as numbers helps nobody; use `render`.
        f.debug_struct("BaseMatrix")
            .field("order", &self.order)
            .field("construction", &self.construction)
            .finish_non_exhaustive()
    }
}

/// `H_{2^a}[i, j]` of the Sylvester matrix of any power-of-two order larger than `i` and `j`.
#[inline]
pub fn sylvester_entry(i: usize, j: usize) -> i8 {
    if (i & j).count_ones().is_multiple_of(2) {
        1
    } else {
        -1
    }
}

/// A Hadamard matrix of order `order` from the constructions of this file, or `None` if none applies.
///
/// Tried in this order: Sylvester (powers of two), Paley I (`order − 1` a prime power ≡ 3 mod 4), Paley II
/// (`order/2 − 1` a prime power ≡ 1 mod 4), Sylvester doubling of a constructible `order/2`. Orders above
/// [`MAX_BASE_ORDER`] are refused.
pub fn base_matrix(order: usize) -> Option<BaseMatrix> {
    if order == 0 || order > MAX_BASE_ORDER {
        return None;
    }
    if order.is_power_of_two() {
        return Some(sylvester(order));
    }
    // Every Hadamard matrix of order > 2 has order ≡ 0 (mod 4).
    if !order.is_multiple_of(4) {
        return None;
    }
    if let Some((p, e)) = prime_power(order - 1)
        && (order - 1) % 4 == 3
    {
        return Some(paley_i(p, e));
    }
    if let Some((p, e)) = prime_power(order / 2 - 1)
        && (order / 2 - 1) % 4 == 1
    {
        return Some(paley_ii(p, e));
    }
    base_matrix(order / 2).map(|half| doubled(&half))
}

fn sylvester(order: usize) -> BaseMatrix {
    let entries = (0..order * order)
        .map(|idx| sylvester_entry(idx / order, idx % order))
        .collect();
    BaseMatrix {
        order,
        construction: Construction::Sylvester,
        entries,
    }
}

/// The Jacobsthal matrix `Q[i, j] = χ(x_i − x_j)` of GF(p^e), `q × q`, with elements in the field's
/// integer order.
fn jacobsthal(field: &GaloisField) -> Vec<i8> {
    let q = field.order();
    let chi = field.quadratic_character();
    let mut out = vec![0i8; q * q];
    for i in 0..q {
        for j in 0..q {
            out[i * q + j] = chi[field.sub(i, j)];
        }
    }
    out
}

fn paley_i(p: usize, e: u32) -> BaseMatrix {
    let field = GaloisField::new(p, e);
    let q = field.order();
    let jac = jacobsthal(&field);
    let k = q + 1;
    let mut entries = vec![0i8; k * k];
    for i in 0..k {
        for j in 0..k {
            // S = [[0, 1ᵀ], [−1, Q]] is skew-symmetric with S Sᵀ = q I, so H = I + S has H Hᵀ = (q + 1) I.
            let s = match (i, j) {
                (0, 0) => 0,
                (0, _) => 1,
                (_, 0) => -1,
                _ => jac[(i - 1) * q + (j - 1)],
            };
            entries[i * k + j] = s + if i == j { 1 } else { 0 };
        }
    }
    BaseMatrix {
        order: k,
        construction: Construction::PaleyI { p, e },
        entries,
    }
}

fn paley_ii(p: usize, e: u32) -> BaseMatrix {
    let field = GaloisField::new(p, e);
    let q = field.order();
    let jac = jacobsthal(&field);
    let c_order = q + 1;
    let k = 2 * c_order;
    let mut entries = vec![0i8; k * k];
    for i in 0..c_order {
        for j in 0..c_order {
            let c = match (i, j) {
                (0, 0) => 0,
                (0, _) | (_, 0) => 1,
                _ => jac[(i - 1) * q + (j - 1)],
            };
            let block: [[i8; 2]; 2] = if c == 0 {
                [[1, -1], [-1, -1]]
            } else {
                [[c, c], [c, -c]]
            };
            for (bi, block_row) in block.iter().enumerate() {
                for (bj, &v) in block_row.iter().enumerate() {
                    entries[(2 * i + bi) * k + 2 * j + bj] = v;
                }
            }
        }
    }
    BaseMatrix {
        order: k,
        construction: Construction::PaleyII { p, e },
        entries,
    }
}

fn doubled(half: &BaseMatrix) -> BaseMatrix {
    let h = half.order;
    let k = 2 * h;
    let mut entries = vec![0i8; k * k];
    for i in 0..k {
        for j in 0..k {
            let v = half.at(i % h, j % h);
            entries[i * k + j] = if i >= h && j >= h { -v } else { v };
        }
    }
    BaseMatrix {
        order: k,
        construction: Construction::Doubled(Box::new(half.construction.clone())),
        entries,
    }
}

/// `Some((p, e))` if `q = p^e` for a prime `p` and `e ≥ 1`.
fn prime_power(q: usize) -> Option<(usize, u32)> {
    if q < 2 {
        return None;
    }
    let mut p = 2;
    while p * p <= q && !q.is_multiple_of(p) {
        p += 1;
    }
    if !q.is_multiple_of(p) {
        // No divisor up to √q: q itself is prime.
        return Some((q, 1));
    }
    let (mut rest, mut e) = (q, 0);
    while rest % p == 0 {
        rest /= p;
        e += 1;
    }
    (rest == 1).then_some((p, e))
}

/// GF(p^e): elements are the integers `0..p^e`, read as polynomials over GF(p) whose base-`p` digits are
/// the coefficients (digit `t` multiplies `x^t`); products are reduced modulo a monic irreducible
/// polynomial of degree `e`, the first one found by enumerating candidates in integer order.
#[derive(Clone, Debug)]
struct GaloisField {
    p: usize,
    e: usize,
    /// Coefficients of the monic modulus, low degree first, `e + 1` of them (the last is 1).
    modulus: Vec<usize>,
}

impl GaloisField {
    fn new(p: usize, e: u32) -> Self {
        let e = e as usize;
        let count = p.pow(e as u32);
        let modulus = (0..count)
            .map(|t| {
                let mut poly = digits(t, p, e);
                poly.push(1);
                poly
            })
            .find(|poly| is_irreducible(poly, p))
            // A monic irreducible polynomial of every degree exists over every GF(p) (Gauss), so the
            // enumeration of all monic polynomials of degree e always finds one.
            .unwrap_or_else(|| {
                unreachable!("no irreducible polynomial of degree {e} over GF({p})")
            });
        Self { p, e, modulus }
    }

    fn order(&self) -> usize {
        self.p.pow(self.e as u32)
    }

    fn poly_of(&self, x: usize) -> Vec<usize> {
        digits(x, self.p, self.e)
    }

    fn element_of(&self, poly: &[usize]) -> usize {
        poly.iter().rev().fold(0, |acc, &c| acc * self.p + c)
    }

    fn sub(&self, x: usize, y: usize) -> usize {
        let (a, b) = (self.poly_of(x), self.poly_of(y));
        let diff: Vec<usize> = a
            .iter()
            .zip(&b)
            .map(|(&u, &v)| (u + self.p - v) % self.p)
            .collect();
        self.element_of(&diff)
    }

    fn mul(&self, x: usize, y: usize) -> usize {
        let (a, b) = (self.poly_of(x), self.poly_of(y));
        let mut prod = vec![0usize; 2 * self.e];
        for (i, &u) in a.iter().enumerate() {
            for (j, &v) in b.iter().enumerate() {
                prod[i + j] = (prod[i + j] + u * v) % self.p;
            }
        }
        let rem = poly_rem(&prod, &self.modulus, self.p);
        self.element_of(&rem[..self.e])
    }

    /// `χ(x)` for every element: 0 for 0, 1 for a nonzero square, −1 otherwise.
    fn quadratic_character(&self) -> Vec<i8> {
        let q = self.order();
        let mut chi = vec![-1i8; q];
        chi[0] = 0;
        for x in 1..q {
            chi[self.mul(x, x)] = 1;
        }
        chi
    }
}

/// The `len` base-`p` digits of `x`, least significant first.
fn digits(mut x: usize, p: usize, len: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(len + 1);
    for _ in 0..len {
        out.push(x % p);
        x /= p;
    }
    out
}

/// `a mod b` over GF(p) for a monic `b` (coefficients low degree first); the result has `deg b`
/// coefficients (zero padded), or `a.len()` if that is fewer.
fn poly_rem(a: &[usize], b: &[usize], p: usize) -> Vec<usize> {
    let mut rem = a.to_vec();
    let db = b.len() - 1;
    for top in (db..rem.len()).rev() {
        let coef = rem[top];
        if coef == 0 {
            continue;
        }
        // Subtract coef · x^(top − db) · b, which clears the x^top term because b is monic.
        for (t, &bt) in b.iter().enumerate() {
            let idx = top - db + t;
            rem[idx] = (rem[idx] + p * p - (coef * bt) % p) % p;
        }
    }
    rem.truncate(db.max(1).min(rem.len()));
    rem.resize(db.max(1), 0);
    rem
}

/// Whether a monic polynomial over GF(p) is irreducible, by trial division with every monic polynomial
/// of degree 1 to ⌊deg/2⌋ (a reducible polynomial has a factor of at most half its degree).
fn is_irreducible(poly: &[usize], p: usize) -> bool {
    let deg = poly.len() - 1;
    for d in 1..=deg / 2 {
        for t in 0..p.pow(d as u32) {
            let mut divisor = digits(t, p, d);
            divisor.push(1);
            if poly_rem(poly, &divisor, p).iter().all(|&c| c == 0) {
                return false;
            }
        }
    }
    deg >= 1
}

/// How the rotation of one dimension `n = k·2^p` is built: `R_n = (H_k ⊗ H_{2^p}) / √n` (DESIGN.md §3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HadamardPlan {
    n: usize,
    log2_pow2: u32,
    base: BaseMatrix,
}

impl HadamardPlan {
    /// The plan for dimension `n`, with the smallest base order `k` such that `n = k·2^p` and a Hadamard
    /// matrix of order `k` is constructible by [`base_matrix`] (`k = 1` when `n` is a power of two).
    ///
    /// **Errors**: [`CoreError::UnsupportedDimension`] naming `n` when no such `k ≤` [`MAX_BASE_ORDER`]
    /// exists (for example `n = 210 = 105·2`), or when `n = 0`.
    pub fn new(n: usize) -> Result<Self> {
        let unsupported = |why: String| CoreError::UnsupportedDimension {
            what: "Hadamard rotation".into(),
            dim: n,
            why,
        };
        if n == 0 {
            return Err(unsupported(
                "a rotation needs at least one dimension".into(),
            ));
        }
        let twos = n.trailing_zeros();
        let odd = n >> twos;
        for shift in 0..=twos {
            let k = odd << shift;
            if k > MAX_BASE_ORDER {
                break;
            }
            if let Some(base) = base_matrix(k) {
                debug_assert!(
                    base.is_hadamard(),
                    "base matrix of order {k} is not Hadamard"
                );
                return Ok(Self {
                    n,
                    log2_pow2: twos - shift,
                    base,
                });
            }
        }
        Err(unsupported(format!(
            "n = {odd}·2^{twos}, and no Hadamard matrix of order {odd}·2^a (a ≤ {twos}, order ≤ \
             {MAX_BASE_ORDER}) is constructible here (Sylvester, Paley I/II over GF(q), doublings)"
        )))
    }

    /// The plan for `n` from a process-wide cache (plans are deterministic and immutable, and building one
    /// for a large base such as 344 costs a few milliseconds).
    ///
    /// **Errors**: as [`HadamardPlan::new`].
    pub fn cached(n: usize) -> Result<Arc<Self>> {
        static PLANS: OnceLock<Mutex<HashMap<usize, Arc<HadamardPlan>>>> = OnceLock::new();
        let plans = PLANS.get_or_init(|| Mutex::new(HashMap::new()));
        // A panic while the lock was held cannot leave the map inconsistent (insert is the only write).
        if let Some(plan) = plans.lock().unwrap_or_else(|e| e.into_inner()).get(&n) {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(Self::new(n)?);
        plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, Arc::clone(&plan));
        Ok(plan)
    }

    /// The dimension `n`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The base order `k`.
    pub fn k(&self) -> usize {
        self.base.order
    }

    /// `p` in `n = k·2^p`.
    pub fn log2_pow2(&self) -> u32 {
        self.log2_pow2
    }

    /// `2^p`, the length of each Walsh–Hadamard segment.
    pub fn pow2(&self) -> usize {
        1 << self.log2_pow2
    }

    /// The base matrix `H_k`.
    pub fn base(&self) -> &BaseMatrix {
        &self.base
    }

    /// The normalisation `1/√n` that makes `R_n` orthogonal.
    pub fn scale(&self) -> f64 {
        1.0 / (self.n as f64).sqrt()
    }

    /// Entry `(i, j)` of the unnormalised `H_k ⊗ H_{2^p}` (so `R[i, j] = entry(i, j) · scale()`), ±1.
    #[inline]
    pub fn entry(&self, i: usize, j: usize) -> i8 {
        let q = self.pow2();
        self.base.at(i / q, j / q) * sylvester_entry(i % q, j % q)
    }
}

/// The recorded sign vector `s ∈ {±1}ⁿ` for one rotation (DESIGN.md §3.2), drawn from the named sub-stream
/// `stream` of `seed` (for example `"layers.3.mlp.down_proj/in"`), so each side of each layer gets its own
/// reproducible signs.
pub fn sign_vector(seed: u64, stream: &str, n: usize) -> Vec<f32> {
    Rng::derive(seed, stream).signs(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layer dimension of the model families in DESIGN.md (SmolLM2, Llama 2/3, Mistral, Qwen2/2.5).
    const MODEL_DIMS: [usize; 12] = [
        576, 1536, 2048, 3072, 4096, 5120, 8192, 11008, 13824, 14336, 18944, 28672,
    ];

    #[test]
    fn every_model_dimension_has_a_plan() {
        let mut table = String::new();
        for n in MODEL_DIMS {
            let plan = HadamardPlan::new(n).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(plan.k() * plan.pow2(), n);
            assert!(plan.base().is_hadamard(), "base of {n} is not Hadamard");
            table.push_str(&format!(
                "{n:>6} = {:>3} · 2^{:<2} {:?}\n",
                plan.k(),
                plan.log2_pow2(),
                plan.base().construction()
            ));
        }
        insta::assert_snapshot!(table);
    }

    #[test]
    fn plan_picks_the_smallest_base() {
        // 11008 = 43·256: 43, 86 (not ≡ 0 mod 4) and 172 (171 = 9·19, 85 = 5·17) are out; 344 = 7³ + 1.
        let plan = HadamardPlan::new(11008).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((plan.k(), plan.log2_pow2()), (344, 5));
        assert_eq!(
            plan.base().construction(),
            &Construction::PaleyI { p: 7, e: 3 }
        );
        // Powers of two use no base matrix at all.
        for n in [1, 2, 64, 4096] {
            let plan = HadamardPlan::new(n).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(plan.k(), 1, "{n}");
        }
        // 112 = 28·4 is fine (28 = 27 + 1, GF(3³)).
        assert_eq!(HadamardPlan::new(112).map(|p| p.k()), Ok(28));
    }

    #[test]
    fn unsupported_dimensions_are_errors_naming_n() {
        for n in [0, 3, 210, 2 * 3 * 5 * 7 * 3 * 8, 1_000_003] {
            match HadamardPlan::new(n) {
                Err(CoreError::UnsupportedDimension { dim, .. }) => assert_eq!(dim, n),
                other => panic!("n = {n}: expected UnsupportedDimension, got {other:?}"),
            }
        }
        let msg = HadamardPlan::new(210).map(|_| ()).unwrap_err().to_string();
        assert!(msg.contains("210"), "{msg}");
    }

    #[test]
    fn base_matrices_used_by_real_models() {
        // Orders 12 (1536, 3072), 20 (5120), 28 (14336, 28672) and 36 (576), as +/- text.
        for k in [12, 20, 28, 36] {
            let base = base_matrix(k).unwrap_or_else(|| panic!("order {k}"));
            assert!(base.is_hadamard());
            insta::assert_snapshot!(
                format!("base_{k}"),
                format!("{:?}\n{}", base.construction(), base.render())
            );
        }
    }

    #[test]
    fn every_construction_is_hadamard() {
        // Paley I for q = 3, 7, 11, 19, 23, 27, 43, 47, 59, 67, 71, 79, 83, 107, 343; Paley II for
        // q = 5, 9, 13, 17, 25, 29, 37, 41, 49, 73; doubling of Paley bases.
        for q in [3, 7, 11, 19, 23, 27, 43, 47, 59, 67, 71, 79, 83, 107, 343] {
            let (p, e) = prime_power(q).unwrap_or_else(|| panic!("{q}"));
            let h = paley_i(p, e);
            assert_eq!(h.order(), q + 1);
            assert!(h.is_hadamard(), "Paley I, q = {q}");
        }
        for q in [5, 9, 13, 17, 25, 29, 37, 41, 49, 73] {
            let (p, e) = prime_power(q).unwrap_or_else(|| panic!("{q}"));
            let h = paley_ii(p, e);
            assert_eq!(h.order(), 2 * (q + 1));
            assert!(h.is_hadamard(), "Paley II, q = {q}");
        }
        for k in [24, 40, 48, 56, 72, 88, 96, 216] {
            let h = base_matrix(k).unwrap_or_else(|| panic!("order {k}"));
            assert!(h.is_hadamard(), "order {k}: {:?}", h.construction());
        }
        // 92 needs Williamson's construction, which is not here.
        assert!(base_matrix(92).is_none());
        assert!(base_matrix(6).is_none());
        assert!(base_matrix(MAX_BASE_ORDER + 4).is_none());
    }

    #[test]
    fn is_hadamard_rejects_non_hadamard() {
        let mut h = base_matrix(12).unwrap_or_else(|| panic!("12"));
        assert!(h.is_hadamard());
        h.entries[5] = -h.entries[5];
        assert!(!h.is_hadamard());
    }

    #[test]
    fn galois_fields_are_fields() {
        for (p, e) in [
            (3, 1),
            (7, 1),
            (2, 3),
            (3, 2),
            (3, 3),
            (5, 2),
            (7, 2),
            (7, 3),
        ] {
            let f = GaloisField::new(p, e);
            let q = f.order();
            // Every nonzero element has exactly one inverse: multiplication by x permutes the nonzero elements.
            for x in 1..q {
                let mut seen = vec![false; q];
                for y in 0..q {
                    seen[f.mul(x, y)] = true;
                }
                assert!(
                    seen.iter().all(|&s| s),
                    "GF({p}^{e}): x = {x} is a zero divisor"
                );
            }
            // x − x = 0, and (x − y) + y = x via sub(x, sub(0, y)).
            for x in 0..q.min(50) {
                assert_eq!(f.sub(x, x), 0);
                for y in 0..q.min(50) {
                    assert_eq!(f.sub(f.sub(x, y), f.sub(0, y)), x);
                }
            }
            if p != 2 {
                let chi = f.quadratic_character();
                let squares = chi.iter().filter(|&&c| c == 1).count();
                assert_eq!(squares, (q - 1) / 2, "GF({p}^{e})");
                // −1 is a square exactly when q ≡ 1 (mod 4).
                let minus_one = f.sub(0, 1);
                assert_eq!(chi[minus_one] == 1, q % 4 == 1, "GF({p}^{e})");
            }
        }
    }

    #[test]
    fn prime_powers() {
        assert_eq!(prime_power(343), Some((7, 3)));
        assert_eq!(prime_power(27), Some((3, 3)));
        assert_eq!(prime_power(107), Some((107, 1)));
        assert_eq!(prime_power(2), Some((2, 1)));
        assert_eq!(prime_power(171), None);
        assert_eq!(prime_power(1), None);
        assert_eq!(prime_power(0), None);
    }

    #[test]
    fn entry_is_the_kronecker_product() {
        let plan = HadamardPlan::new(48).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((plan.k(), plan.pow2()), (12, 4));
        let h12 = base_matrix(12).unwrap_or_else(|| panic!("12"));
        for i in 0..48 {
            for j in 0..48 {
                let want = h12.at(i / 4, j / 4) * sylvester_entry(i % 4, j % 4);
                assert_eq!(plan.entry(i, j), want);
            }
        }
        let cached = HadamardPlan::cached(48).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*cached, plan);
    }

    #[test]
    fn sign_vectors_are_reproducible_and_balanced() {
        let a = sign_vector(42, "layers.0.q/in", 4096);
        assert_eq!(a, sign_vector(42, "layers.0.q/in", 4096));
        assert_ne!(a, sign_vector(42, "layers.0.q/out", 4096));
        assert_ne!(a, sign_vector(43, "layers.0.q/in", 4096));
        assert!(a.iter().all(|&s| s == 1.0 || s == -1.0));
        let plus = a.iter().filter(|&&s| s > 0.0).count();
        // Binomial(4096, ½) has standard deviation 32; 6σ = 192.
        assert!(plus.abs_diff(2048) < 192, "{plus} of 4096 are +1");
    }
}
