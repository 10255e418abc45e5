//! The CPU backend's kernels that the models lean on, checked against plain Rust reference
//! computations. burn-flex is patched in `vendor/burn-flex` (parallel element-wise loops, a
//! libm-free f32 `tanh`, matmul outputs not zero-filled): these tests pin what the patch must
//! preserve.

use burn::tensor::{Tensor, TensorData, activation};
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
        check("sqrt(b)", tb().sqrt(), &|i| b[i].sqrt());
        // A shared input takes the allocating paths (the in-place ones need a unique buffer).
        let shared = ta();
        check("shared + b", shared.clone() + tb(), &|i| a[i] + b[i]);
        check("shared * 3", shared.clone() * 3.0, &|i| a[i] * 3.0);
        check("exp(shared)", shared.clone().exp(), &|i| a[i].exp());
        drop(shared);
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
