//! The CPU backend's element-wise kernels that the models lean on, checked against plain Rust
//! reference computations. burn-flex is patched in `vendor/burn-flex` (parallel element-wise
//! loops, a libm-free f32 `tanh`): these tests pin what the patch must preserve.

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
