//! Checks the arithmetic of the CUDA kernel's source on machines without a GPU: `ivon.cu`'s
//! element functions are plain C, so they are compiled here with the host's C compiler
//! (the one cargo links with) without floating-point contraction, run on the inputs the
//! CPU kernel gets, and compared bit for bit. What this cannot check, the launch itself,
//! `scripts/gpu-check.sh` runs on a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor, Var};

use super::contract::{c_header, VlCoeffs, HESS, MEAN, MOMENTUM, NOISE, ROWS};
use super::{cpu, Draws, IvonCoeffs};
use crate::noise::PhiloxNormal;

const HARNESS: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include "contract.h"
#include KERNEL

/* in: n, seed, block, offset (u64), the VlCoeffs struct, then theta, grad (2n values when
   averaged) and the VL_ROWS * n state values (f32); out: theta, state, then draws 0..n of
   the request. */
int main(int argc, char** argv) {
    FILE* in = fopen(argv[1], "rb");
    FILE* out = fopen(argv[2], "wb");
    vl_u64 hdr[4];
    VlCoeffs c;
    if (!in || !out || fread(hdr, 8, 4, in) != 4 || fread(&c, sizeof c, 1, in) != 1) return 1;
    vl_u64 n = hdr[0];
    vl_u64 gn = c.averaged ? 2 * n : n;
    float* theta = malloc(4 * n);
    float* grad = malloc(4 * gn);
    float* state = malloc(4 * VL_ROWS * n);
    if (fread(theta, 4, n, in) != n || fread(grad, 4, gn, in) != gn ||
        fread(state, 4, VL_ROWS * n, in) != VL_ROWS * n) return 2;
    for (vl_u64 i = 0; i < n; ++i) {
        float z = vl_normal(hdr[1], hdr[2], hdr[3] + i);
        float hs = c.averaged ? grad[n + i] : vl_hess_sample(state[VL_NOISE * n + i], grad[i], &c);
        vl_element(&theta[i], grad[i], hs, &state[VL_MEAN * n + i], &state[VL_HESS * n + i],
                   &state[VL_MOMENTUM * n + i], &state[VL_NOISE * n + i], z, &c);
    }
    fwrite(theta, 4, n, out);
    fwrite(state, 4, VL_ROWS * n, out);
    for (vl_u64 i = 0; i < n; ++i) {
        float z = vl_normal(hdr[1], hdr[2], i);
        fwrite(&z, 4, 1, out);
    }
    return fclose(out);
}
"#;

/// Compiles the harness around `ivon.cu` into `dir`.
fn compile(dir: &Path) -> PathBuf {
    let kernel = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/ivon.cu");
    let src = dir.join("harness.c");
    let exe = dir.join("harness");
    std::fs::write(&src, HARNESS).unwrap();
    std::fs::write(dir.join("contract.h"), c_header()).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-O2", "-ffp-contract=off", "-x", "c"])
        .arg(format!("-DKERNEL=\"{}\"", kernel.display()))
        .arg(format!("-I{}", dir.display()))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-lm")
        .status()
        .unwrap_or_else(|e| panic!("the C compiler `{cc}` (set CC to another) did not run: {e}"));
    assert!(status.success(), "ivon.cu does not compile as C");
    exe
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Inputs with the cases that matter for the bits: zeros of both signs, gradients large
/// enough to be clipped, tiny and huge values.
fn inputs(n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let wave = |k: f32, a: f32| (0..n).map(move |i| (i as f32 * k).sin() * a);
    let mut grad: Vec<f32> = wave(0.37, 0.5).collect();
    grad[0] = 0.0;
    grad[1] = -0.0;
    grad[2] = 1e6;
    grad[3] = -3e-38;
    let theta = vec![0f32; n];
    let mut rows = vec![Vec::new(); ROWS];
    rows[MEAN] = wave(0.11, 0.5).collect();
    rows[HESS] = wave(0.23, 0.5).map(|v| v.abs() + 1e-3).collect();
    rows[MOMENTUM] = wave(0.05, 0.1).collect();
    rows[NOISE] = wave(0.71, 0.01).collect();
    // A zero gradient on a zero of negative sign: `x * k + 0.0` must give +0.
    rows[MOMENTUM][1] = -0.0;
    let state = rows.concat();
    (theta, grad, state)
}

#[test]
fn cuda_source_gives_the_cpu_kernels_bits() {
    let dir = std::env::temp_dir().join(format!("varlora-cuda-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = compile(&dir);
    let n = 3000;
    for (price, debias, clip, averaged) in [
        (true, Some(0.19f32), 0.05f32, false),
        (false, None, f32::INFINITY, false),
        (true, None, 1e-3, false),
        (true, Some(0.19), 0.05, true),
        (false, None, f32::INFINITY, true),
    ] {
        let c = IvonCoeffs {
            averaged,
            ..IvonCoeffs::for_tests(price, debias, clip)
        };
        let draws = Draws {
            seed: 0x1234_5678_9abc,
            block: 7,
            offset: 13,
        };
        let (theta, mut grad, state) = inputs(n);
        if averaged {
            // The ranks' mean Hessian statistic: its own values, unlike any local one.
            grad.extend((0..n).map(|i| (i as f32 * 0.29).cos() * 0.3));
        }

        let mut input = Vec::new();
        for v in [n as u64, draws.seed, draws.block, draws.offset as u64] {
            input.extend(v.to_le_bytes());
        }
        input.extend(VlCoeffs::from(&c).to_le_bytes());
        input.extend(bytes(&theta));
        input.extend(bytes(&grad));
        input.extend(bytes(&state));
        let (inp, outp) = (dir.join("in.bin"), dir.join("out.bin"));
        std::fs::write(&inp, input).unwrap();
        let status = Command::new(&exe).arg(&inp).arg(&outp).status().unwrap();
        assert!(status.success());
        let out: Vec<u32> = std::fs::read(&outp)
            .unwrap()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(out.len(), (2 + ROWS) * n);

        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(theta.as_slice(), &dev).unwrap()).unwrap();
        let st = Tensor::from_vec(state, (ROWS, n), &dev).unwrap();
        let g = Tensor::new(grad.as_slice(), &dev).unwrap();
        cpu::ivon_step(&var, &st, &g, draws, &c).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(
            out[..n],
            bits(var.as_tensor())[..],
            "weights, price {price}"
        );
        assert_eq!(
            out[n..(1 + ROWS) * n],
            bits(&st)[..],
            "state, price {price}"
        );

        let mut z = vec![0f32; n];
        PhiloxNormal::at(draws.seed, draws.block).fill(&mut z);
        let z: Vec<u32> = z.iter().map(|x| x.to_bits()).collect();
        assert_eq!(out[(1 + ROWS) * n..], z[..], "draws");
    }
    std::fs::remove_dir_all(&dir).ok();
}
