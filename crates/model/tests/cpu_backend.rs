//! The CPU backend's kernels that the models lean on, checked against plain Rust reference
//! computations. burn-flex is patched in `vendor/burn-flex` (parallel element-wise loops, a
//! libm-free f32 `tanh`, element-wise loops compiled for AVX2 as well, an AVX-512 f32 `exp`
//! with libm's bits, matmul outputs not zero-filled): these tests pin what the patch must preserve.

use burn::tensor::{Tensor, TensorData, activation};
use burn_flex::ops::unary::tanh_f32;
use burn_flex::{Flex, FlexDevice};

type B = Flex;

fn device() -> FlexDevice {
    FlexDevice
}

fn values(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 tensor")
}

/// Distance in units of the f32 spacing at the exact value.
fn ulps(got: f32, exact: f64) -> f64 {
    let spacing = {
        let e = exact.abs() as f32;
        (f32::from_bits(e.to_bits() + 1) - e) as f64
    };
    (got as f64 - exact).abs() / spacing
}

#[test]
fn flex_tanh_matches_f64_tanh() {
    // Dense over [-12, 12] (every branch and the saturation at |x| = 9), plus a log grid
    // down to 1e-30 where tanh(x) = x must hold exactly in f32.
    let mut xs: Vec<f32> = (0..=480_000).map(|i| -12.0 + i as f32 * 5e-5).collect();
    xs.extend((0..=3_000).map(|i| 10f32.powf(-30.0 + i as f32 * 0.01)));
    xs.extend([0.625, -0.625, 0.624_999_94, 9.0, 9.5, 88.0, -1e30, 1e30]);
    let got = values(activation::tanh(Tensor::<B, 1>::from_floats(
        xs.as_slice(),
        &device(),
    )));
    let mut worst = (0.0f64, 0.0f32);
    for (&x, &y) in xs.iter().zip(&got) {
        let u = ulps(y, (x as f64).tanh());
        if u > worst.0 {
            worst = (u, x);
        }
    }
    assert!(
        worst.0 <= 2.0,
        "tanh({}) is {} ulp from the exact value",
        worst.1,
        worst.0
    );

    let special = values(activation::tanh(Tensor::<B, 1>::from_floats(
        [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0],
        &device(),
    )));
    assert!(special[0].is_nan(), "tanh(NaN) = {}", special[0]);
    assert_eq!(&special[1..], &[1.0, -1.0, 0.0, -0.0]);
    assert!(special[4].is_sign_negative(), "tanh(-0) keeps its sign");
}

/// Sizes around the parallel threshold (64 K elements) and the 16 K chunk, including ragged
/// tails: every element must be what a plain loop computes, bit for bit.
#[test]
fn element_wise_ops_agree_with_a_plain_loop_at_every_size() {
    for n in [
        1usize,
        1_000,
        65_535,
        65_536,
        65_537,
        16_384 * 7 + 3,
        1_000_003,
    ] {
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
            .collect();
        let b: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 1000) as f32 / 89.0 + 0.5)
            .collect();
        let ta = || Tensor::<B, 1>::from_data(TensorData::new(a.clone(), [n]), &device());
        let tb = || Tensor::<B, 1>::from_data(TensorData::new(b.clone(), [n]), &device());

        let check = |what: &str, got: Tensor<B, 1>, want: &dyn Fn(usize) -> f32| {
            let got = values(got);
            assert_eq!(got.len(), n, "{what}, n = {n}");
            for (i, g) in got.iter().enumerate() {
                assert_eq!(g.to_bits(), want(i).to_bits(), "{what}[{i}], n = {n}");
            }
        };
        check("a + b", ta() + tb(), &|i| a[i] + b[i]);
        check("a * b", ta() * tb(), &|i| a[i] * b[i]);
        check("a / b", ta() / tb(), &|i| a[i] / b[i]);
        check("a * 0.3", ta() * 0.3, &|i| a[i] * 0.3);
        check("a - 2", ta() - 2.0, &|i| a[i] - 2.0);
        check("exp(a)", ta().exp(), &|i| a[i].exp());
        check("tanh(a)", activation::tanh(ta()), &|i| tanh_f32(a[i]));
        check("sqrt(b)", tb().sqrt(), &|i| b[i].sqrt());
        // A shared input takes the allocating paths (the in-place ones need a unique buffer).
        let shared = ta();
        check("shared + b", shared.clone() + tb(), &|i| a[i] + b[i]);
        check("shared * 3", shared.clone() * 3.0, &|i| a[i] * 3.0);
        check("exp(shared)", shared.clone().exp(), &|i| a[i].exp());
        check("tanh(shared)", activation::tanh(shared.clone()), &|i| {
            tanh_f32(a[i])
        });
        drop(shared);
    }
}

/// The element-wise loops run in a copy compiled for AVX2 where the CPU has it: f32 `tanh`
/// (the longest closure they inline) must still give the bits of the scalar function, called
/// here from code built for baseline x86-64, on a sample of about 4.3 M bit patterns.
#[test]
fn tanh_in_wide_loops_is_the_scalar_functions_bit_for_bit() {
    report_kernels();
    let xs = exp_inputs(777, 1009);
    let n = xs.len();
    let t = Tensor::<B, 1>::from_data(TensorData::new(xs.clone(), [n]), &device());
    let got = values(activation::tanh(t));
    for (x, g) in xs.iter().zip(&got) {
        let want = tanh_f32(*x);
        assert_eq!(
            g.to_bits(),
            want.to_bits(),
            "tanh({x:e}) [bits {:#010x}] is {g:e}, the scalar function gives {want:e}",
            x.to_bits()
        );
    }
}

/// The edges of glibc's fast path (|x| < 88), its overflow and underflow limits and the
/// special values first (so they land in the vector kernel's lanes, not a slice's scalar
/// tail), then every `step`-th f32 bit pattern from `first`, both signs.
fn exp_inputs(first: u64, step: u64) -> Vec<f32> {
    let mut xs = Vec::new();
    for x in [
        88.0f32, 87.999_99, 88.72, 88.722_84, 89.0, -88.0, -87.999_99, -103.9, -104.0,
    ] {
        xs.extend([
            x,
            -x,
            f32::from_bits(x.to_bits() + 1),
            f32::from_bits(x.to_bits() - 1),
        ]);
    }
    xs.extend([
        0.0,
        -0.0,
        1e-45,
        -1e-45,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    xs.extend([
        f32::NAN,
        f32::from_bits(0x7fa0_0001),
        f32::from_bits(0xffc0_0000),
    ]);
    xs.extend(
        (first..1u64 << 32)
            .step_by(step as usize)
            .map(|b| f32::from_bits(b as u32)),
    );
    xs
}

/// Which kernels this CPU runs, printed so a run on a CPU without them is visible as such.
fn report_kernels() {
    #[cfg(target_arch = "x86_64")]
    eprintln!(
        "CPU: avx512f {}, avx2 {}, fma {} (the vector exp needs all three, the wide \
         element-wise loops avx2 and fma; otherwise both sides of these checks are the scalar code)",
        std::arch::is_x86_feature_detected!("avx512f"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("fma"),
    );
}

/// `got` is libm's `expf` of `xs`, bit for bit (NaNs as libm returns them).
fn assert_libm_exp(what: &str, xs: &[f32], got: &[f32]) {
    assert_eq!(got.len(), xs.len(), "{what}");
    for (x, g) in xs.iter().zip(got) {
        let want = x.exp();
        assert_eq!(
            g.to_bits(),
            want.to_bits(),
            "{what}: exp({x:e}) [bits {:#010x}] is {g:e}, libm gives {want:e}",
            x.to_bits()
        );
    }
}

/// The patched f32 `exp` follows glibc's `expf` step by step with AVX-512, so it must give
/// libm's bits on every input, on each of the paths a tensor can take (unique buffer, shared
/// buffer, a transposed view, a view with an offset, a flipped view, a column slice). A sample
/// of about 4.3 M bit patterns here; `exp_is_libms_on_every_f32` (ignored, ~1 min) covers all
/// 2^32.
#[test]
fn exp_is_libms_bit_for_bit() {
    report_kernels();
    let xs = exp_inputs(12_345, 1009);
    let n = xs.len();
    let tensor = || Tensor::<B, 1>::from_data(TensorData::new(xs.clone(), [n]), &device());
    assert_libm_exp("unique", &xs, &values(tensor().exp()));
    let shared = tensor();
    assert_libm_exp("shared", &xs, &values(shared.clone().exp()));
    drop(shared);

    // Views: values whose exponentials all differ (|x| < 80), so a wrong element order fails.
    let (rows, cols) = (1000, 37);
    let grid: Vec<f32> = (0..rows * cols)
        .map(|k| (k as f32 * 0.37).sin() * 80.0)
        .collect();
    let at = |i: usize, j: usize| grid[i * cols + j];
    let t = || Tensor::<B, 2>::from_data(TensorData::new(grid.clone(), [rows, cols]), &device());
    let host = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().expect("f32 tensor");

    // A transposed view keeps its layout: element (j, i) of the result is exp(x[i][j]).
    let want: Vec<f32> = (0..cols)
        .flat_map(|j| (0..rows).map(move |i| (i, j)))
        .map(|(i, j)| at(i, j))
        .collect();
    assert_libm_exp("transposed", &want, &host(t().transpose().exp()));
    // Rows 3.. : a contiguous view that starts at an offset.
    assert_libm_exp(
        "offset view",
        &grid[3 * cols..],
        &host(t().slice([3..rows, 0..cols]).exp()),
    );
    // Rows in reverse order: negative strides.
    let want: Vec<f32> = (0..rows)
        .rev()
        .flat_map(|i| (0..cols).map(move |j| (i, j)))
        .map(|(i, j)| at(i, j))
        .collect();
    assert_libm_exp("flipped", &want, &host(t().flip([0]).exp()));
    // Columns 5..29 of every row: many separate blocks.
    let want: Vec<f32> = (0..rows)
        .flat_map(|i| (5..29).map(move |j| (i, j)))
        .map(|(i, j)| at(i, j))
        .collect();
    assert_libm_exp(
        "column slice",
        &want,
        &host(t().slice([0..rows, 5..29]).exp()),
    );
}

/// All 2^32 inputs, in slices of 2^24 (run with `--ignored`; about a minute on two cores).
#[test]
#[ignore = "exhaustive: run by hand after changing vendor/burn-flex/src/ops/expf.rs"]
fn exp_is_libms_on_every_f32() {
    for high in 0u64..256 {
        let xs: Vec<f32> = (high << 24..(high + 1) << 24)
            .map(|b| f32::from_bits(b as u32))
            .collect();
        let n = xs.len();
        let t = Tensor::<B, 1>::from_data(TensorData::new(xs.clone(), [n]), &device());
        assert_libm_exp("all inputs", &xs, &values(t.exp()));
    }
}

/// 2-D products write their whole output without reading it (the patch allocates it without
/// zeroing): checked against an f64 reference after the heap has held NaNs of the same size, with
/// row-major and transposed operands, shapes that leave partial tiles, and k = 0 (all zeros).
#[test]
fn matmul_overwrites_its_output_and_matches_a_reference() {
    let dev = device();
    for (m, k, n) in [(37, 53, 29), (400, 61, 300), (5, 0, 7), (1, 1, 1)] {
        // Put NaNs where the output is likely to be allocated next.
        drop(std::hint::black_box(vec![f32::NAN; m * n]));
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let bt: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let lhs = Tensor::<B, 2>::from_data(TensorData::new(a.clone(), [m, k]), &dev);
        // The right operand as the transpose of a row-major [n, k] (a strided view), and as a
        // row-major copy.
        let rhs_t =
            Tensor::<B, 2>::from_data(TensorData::new(bt.clone(), [n, k]), &dev).transpose();
        let rhs: Vec<f32> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
        let rhs = Tensor::<B, 2>::from_data(TensorData::new(rhs, [k, n]), &dev);
        for (what, r) in [("strided", rhs_t), ("row-major", rhs)] {
            let got = lhs
                .clone()
                .matmul(r)
                .into_data()
                .to_vec::<f32>()
                .expect("f32 tensor");
            assert_eq!(got.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| a[i * k + p] as f64 * bt[j * k + p] as f64)
                        .sum();
                    let g = got[i * n + j];
                    assert!(
                        (g as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{what} {m}x{k}x{n} at ({i}, {j}): {g} vs {want}"
                    );
                }
            }
        }
    }
}
