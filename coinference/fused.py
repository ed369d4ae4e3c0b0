"""A fused CPU runtime for (shrunk) device heads: BN folded into the convolutions, ReLU and residual adds in their
epilogue, every image run through the whole head before the next (its activations stay in the CPU's caches).

oneDNN vectorises a convolution along its channels, so the 4–8-channel convolutions left by heavy pruning run far
below its speed per MAC at 16–64 channels (docs/RESULTS.md, issue 3). The kernels here vectorise along an image
row instead (two to eight output channels of one or two rows held in registers), so their speed per MAC depends
much less on the channel count. The C source below is compiled once per machine with the system C compiler
(``$CC``, else ``cc``; ``-O3 -march=native``) into a cache folder (``$COINFERENCE_CACHE``, else
``~/.cache/coinference``) and loaded with ctypes; nothing is pickled.

Supported modules (the zoo's heads, dense or shrunk): ``nn.Sequential``, ``nn.Identity``, the zoo's ``Stem``,
``ConvBlock`` and ``BasicBlock`` (identity, option-A, option-B and :class:`~coinference.prune.shrink.ChannelGather`
shortcuts), ``GlobalPool``, ``Conv2d`` (3 × 3 with padding 1 or 1 × 1 without, stride 1 or 2, no groups or
dilation) followed by ``BatchNorm2d`` and ``ReLU``. Anything else raises :class:`ConfigError` naming it.
Single-threaded; float32; inputs NCHW.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import math
import os
import platform
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coinference.data import ImageData
from coinference.errors import ConfigError
from coinference.evaluate import INFERENCE_BATCH, eval_mode, outputs
from coinference.prune.shrink import ChannelGather
from coinference.zoo.base import GlobalPool
from coinference.zoo.resnet import BasicBlock, ShortcutA, Stem
from coinference.zoo.tiny import ConvBlock

C_SOURCE = r"""
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#define TW 32

/* Activations are padded planes: channel c of a (C, H, W) tensor is rows 1..H, columns 1..W of a zero-bordered
   (H + 2) x (W + 2) plane. Weights are (CO rounded up to 8, CI, K, K), BN folded, zero rows past CO. */

typedef float v8 __attribute__((vector_size(32)));
typedef int vi8 __attribute__((vector_size(32)));
static inline v8 ld8(const float* p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void st8(float* p, v8 v) { memcpy(p, &v, sizeof v); }
/* A tile's epilogue: 8 outputs at out + at, plus the residual, through ReLU (a NaN passes: the mask keeps it). */
static inline void emit8(float* out, const float* res, size_t at, v8 a, int relu) {
  if (res) a += ld8(res + at);
  if (relu) { const v8 z = {0}; const vi8 m = a < z; a = (v8)((vi8)a & ~m); }
  st8(out + at, a);
}

/* Portable scalar convolution (any K in {1, 3}, stride S) of output columns [xa, OW) of every row. */
#define CONV_BODY(LOAD)                                                                                   \
  for (int co0 = 0; co0 < CO; co0 += 4) {                                                                 \
    const int nc = CO - co0 < 4 ? CO - co0 : 4;                                                           \
    for (int y = 0; y < OH; y++) {                                                                        \
      for (int x0 = xa; x0 < OW; x0 += TW) {                                                              \
        const int tw = OW - x0 < TW ? OW - x0 : TW;                                                       \
        float a0[TW], a1[TW], a2[TW], a3[TW];                                                             \
        for (int x = 0; x < tw; x++) {                                                                    \
          a0[x] = b[co0]; a1[x] = b[co0 + 1]; a2[x] = b[co0 + 2]; a3[x] = b[co0 + 3];                     \
        }                                                                                                 \
        for (int ci = 0; ci < CI; ci++) {                                                                 \
          for (int ky = 0; ky < K; ky++) {                                                                \
            const float* row = in + ((size_t)ci * IPH + (size_t)y * S + ky + off) * IPW + (size_t)x0 * S + off; \
            const float* wk = w + ((size_t)co0 * CI + ci) * K * K + ky * K;                               \
            for (int kx = 0; kx < K; kx++) {                                                              \
              const float* r = row + kx;                                                                  \
              const float w0 = wk[kx], w1 = wk[kx + CKK], w2 = wk[kx + 2 * CKK], w3 = wk[kx + 3 * CKK];   \
              for (int x = 0; x < tw; x++) {                                                              \
                const float v = LOAD;                                                                     \
                a0[x] += w0 * v; a1[x] += w1 * v; a2[x] += w2 * v; a3[x] += w3 * v;                       \
              }                                                                                           \
            }                                                                                             \
          }                                                                                               \
        }                                                                                                 \
        float* acc[4] = {a0, a1, a2, a3};                                                                 \
        for (int c = 0; c < nc; c++) {                                                                    \
          float* o = out + ((size_t)(co0 + c) * OPH + y + 1) * OPW + 1 + x0;                              \
          const float* rr = res ? res + ((size_t)(co0 + c) * OPH + y + 1) * OPW + 1 + x0 : NULL;          \
          for (int x = 0; x < tw; x++) {                                                                  \
            float v = acc[c][x] + (rr ? rr[x] : 0.0f);                                                    \
            o[x] = relu && v < 0.0f ? 0.0f : v;                                                           \
          }                                                                                               \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  }

static void conv_s1(const float* restrict in, int CI, int IH, int IW, const float* restrict w,
                    const float* restrict b, int CO, int K, float* restrict out, int OH, int OW,
                    const float* restrict res, int relu, int xa) {
  const int S = 1, IPW = IW + 2, IPH = IH + 2, OPW = OW + 2, OPH = OH + 2, off = K == 3 ? 0 : 1, CKK = CI * K * K;
  (void)IH;
  CONV_BODY(r[x])
}

static void conv_s2(const float* restrict in, int CI, int IH, int IW, const float* restrict w,
                    const float* restrict b, int CO, int K, float* restrict out, int OH, int OW,
                    const float* restrict res, int relu, int xa) {
  const int S = 2, IPW = IW + 2, IPH = IH + 2, OPW = OW + 2, OPH = OH + 2, off = K == 3 ? 0 : 1, CKK = CI * K * K;
  (void)IH;
  CONV_BODY(r[2 * x])
}

/* Register-blocked 3 x 3, stride-1 convolution: NC output channels x NV vectors of 8 columns of R = 1 or 2
   output rows held in registers over the whole reduction. Two rows share each loaded input row (rows y + 1 and
   y + 2 feed both), which halves the loads per FMA. Every output sums bias, then ci, ky, kx in the same order as
   the scalar code, so all kernels give the same bits. */
#define ACC_ROW(R, KY, NC, NV)                                                                            \
  {                                                                                                       \
    const float* wk = w + (size_t)co0 * CKK + ci * 9 + (KY) * 3;                                          \
    for (int c = 0; c < (NC); c++) {                                                                      \
      const float wc = wk[(size_t)c * CKK + kx];                                                          \
      for (int v = 0; v < (NV); v++) acc[R][c][v] += wc * xv[v];                                          \
    }                                                                                                     \
  }
#define BLOCK(R, NC, NV)                                                                                  \
  {                                                                                                       \
    v8 acc[R][NC][NV];                                                                                    \
    for (int r = 0; r < (R); r++)                                                                         \
      for (int c = 0; c < (NC); c++)                                                                      \
        for (int v = 0; v < (NV); v++) acc[r][c][v] = (v8){0} + b[co0 + c];                                \
    for (int ci = 0; ci < CI; ci++) {                                                                     \
      for (int rr = 0; rr < (R) + 2; rr++) {                                                              \
        const float* row = in + ((size_t)ci * IPH + y + rr) * IPW + x0;                                   \
        for (int kx = 0; kx < 3; kx++) {                                                                  \
          v8 xv[NV];                                                                                      \
          for (int v = 0; v < (NV); v++) xv[v] = ld8(row + kx + 8 * v);                                   \
          if (rr < 3) ACC_ROW(0, rr, NC, NV)                                                              \
          if ((R) == 2 && rr >= 1) ACC_ROW((R) - 1, rr - 1, NC, NV)                                       \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
    for (int r = 0; r < (R); r++) {                                                                       \
      for (int c = 0; c < nc; c++) {                                                                      \
        for (int v = 0; v < (NV); v++) {                                                                  \
          emit8(out, res, ((size_t)(co0 + c) * OPH + y + r + 1) * OPW + 1 + x0 + 8 * v, acc[r][c][v], relu); \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  }
/* Covers columns [0, OW - OW % (8 NV)) of every row; returns where the scalar code takes over. */
#define TILED(R, NC, NV)                                                                                  \
static int conv3_##R##x##NC##x##NV(const float* restrict in, int CI, int IH, int IW, const float* restrict w, \
                                   const float* restrict b, int CO, float* restrict out, int OH, int OW,  \
                                   const float* restrict res, int relu) {                                 \
  const int IPW = IW + 2, IPH = IH + 2, OPW = OW + 2, OPH = OH + 2, CKK = CI * 9, XW = 8 * (NV);         \
  const int xe = OW - OW % XW;                                                                            \
  (void)IH;                                                                                               \
  for (int co0 = 0; co0 < CO; co0 += (NC)) {                                                              \
    const int nc = CO - co0 < (NC) ? CO - co0 : (NC);                                                     \
    int y = 0;                                                                                            \
    for (; y + (R) <= OH; y += (R))                                                                       \
      for (int x0 = 0; x0 < xe; x0 += XW) BLOCK(R, NC, NV)                                                \
    for (; y < OH; y++) /* an odd last row of a two-row kernel */                                         \
      for (int x0 = 0; x0 < xe; x0 += XW) BLOCK(1, NC, NV)                                                \
  }                                                                                                       \
  return xe;                                                                                              \
}
TILED(1, 2, 4)
TILED(1, 4, 2)
TILED(1, 8, 1)
TILED(2, 2, 2)

/* Scratch memory of this thread, grown as needed and kept (the stride-2 kernels' even/odd rows). */
static __thread float* scratch_buf = NULL;
static __thread size_t scratch_cap = 0;
static float* scratch(size_t n) {
  if (n > scratch_cap) {
    float* p = realloc(scratch_buf, n * sizeof(float));
    if (!p) return NULL;
    scratch_buf = p;
    scratch_cap = n;
  }
  return scratch_buf;
}

/* Register-blocked 3 x 3, stride-2 convolution: the input rows are first split into their even and odd columns
   (E, O: column 2m + kx of a row is E[m], O[m], E[m + 1] for kx = 0, 1, 2), so the kernel loads contiguous
   vectors. Same summation order as the scalar code. Covers columns [0, OW - OW % (8 NV)). */
#define TILED_S2(NC, NV)                                                                                  \
static int conv3s2_##NC##x##NV(const float* restrict in, int CI, int IH, int IW, const float* restrict w, \
                               const float* restrict b, int CO, float* restrict out, int OH, int OW,      \
                               const float* restrict res, int relu) {                                     \
  const int IPW = IW + 2, IPH = IH + 2, OPW = OW + 2, OPH = OH + 2, CKK = CI * 9, XW = 8 * (NV);         \
  const int xe = OW - OW % XW, HW = (IPW + 1) / 2;                                                        \
  if (xe == 0) return 0;                                                                                  \
  float* eo = scratch((size_t)CI * IPH * 2 * HW);                                                         \
  if (!eo) return 0; /* the scalar code does it all */                                                    \
  for (int ci = 0; ci < CI; ci++)                                                                         \
    for (int r = 0; r < IPH; r++) {                                                                       \
      const float* src = in + ((size_t)ci * IPH + r) * IPW;                                               \
      float* e = eo + ((size_t)ci * IPH + r) * 2 * HW;                                                    \
      float* o = e + HW;                                                                                  \
      for (int m = 0; m < HW; m++) {                                                                      \
        e[m] = src[2 * m];                                                                                \
        o[m] = 2 * m + 1 < IPW ? src[2 * m + 1] : 0.0f;                                                   \
      }                                                                                                   \
    }                                                                                                     \
  for (int co0 = 0; co0 < CO; co0 += (NC)) {                                                              \
    const int nc = CO - co0 < (NC) ? CO - co0 : (NC);                                                     \
    for (int y = 0; y < OH; y++) {                                                                        \
      for (int x0 = 0; x0 < xe; x0 += XW) {                                                               \
        v8 acc[NC][NV];                                                                                   \
        for (int c = 0; c < (NC); c++)                                                                    \
          for (int v = 0; v < (NV); v++) acc[c][v] = (v8){0} + b[co0 + c];                                \
        for (int ci = 0; ci < CI; ci++) {                                                                 \
          for (int ky = 0; ky < 3; ky++) {                                                                \
            const float* e = eo + ((size_t)ci * IPH + 2 * y + ky) * 2 * HW + x0;                          \
            const float* wk = w + (size_t)co0 * CKK + ci * 9 + ky * 3;                                    \
            for (int kx = 0; kx < 3; kx++) {                                                              \
              const float* src = kx == 1 ? e + HW : e + kx / 2;                                           \
              v8 xv[NV];                                                                                  \
              for (int v = 0; v < (NV); v++) xv[v] = ld8(src + 8 * v);                                    \
              for (int c = 0; c < (NC); c++) {                                                            \
                const float wc = wk[(size_t)c * CKK + kx];                                                \
                for (int v = 0; v < (NV); v++) acc[c][v] += wc * xv[v];                                   \
              }                                                                                           \
            }                                                                                             \
          }                                                                                               \
        }                                                                                                 \
        for (int c = 0; c < nc; c++) {                                                                    \
          for (int v = 0; v < (NV); v++) {                                                                \
            emit8(out, res, ((size_t)(co0 + c) * OPH + y + 1) * OPW + 1 + x0 + 8 * v, acc[c][v], relu);   \
          }                                                                                               \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
  }                                                                                                       \
  return xe;                                                                                              \
}
TILED_S2(4, 2)
TILED_S2(8, 1)

/* tile: 0 scalar; 3 x 3, stride 1: 1: 2 channels x 32 columns, 2: 4 x 16, 3: 8 x 8, 4: 2 x 16 x 2 rows;
   3 x 3, stride 2: 5: 4 x 16, 6: 8 x 8. A tile that does not fit the convolution runs the scalar code. */
void conv(const float* in, int CI, int IH, int IW, const float* w, const float* b, int CO, int K, int S,
          float* out, int OH, int OW, const float* res, int relu, int tile) {
  int xa = 0;
  if (K == 3 && S == 1 && tile == 1) xa = conv3_1x2x4(in, CI, IH, IW, w, b, CO, out, OH, OW, res, relu);
  else if (K == 3 && S == 1 && tile == 2) xa = conv3_1x4x2(in, CI, IH, IW, w, b, CO, out, OH, OW, res, relu);
  else if (K == 3 && S == 1 && tile == 3) xa = conv3_1x8x1(in, CI, IH, IW, w, b, CO, out, OH, OW, res, relu);
  else if (K == 3 && S == 1 && tile == 4) xa = conv3_2x2x2(in, CI, IH, IW, w, b, CO, out, OH, OW, res, relu);
  else if (K == 3 && S == 2 && tile == 5) xa = conv3s2_4x2(in, CI, IH, IW, w, b, CO, out, OH, OW, res, relu);
  else if (K == 3 && S == 2 && tile == 6) xa = conv3s2_8x1(in, CI, IH, IW, w, b, CO, out, OH, OW, res, relu);
  if (xa < OW) (S == 1 ? conv_s1 : conv_s2)(in, CI, IH, IW, w, b, CO, K, out, OH, OW, res, relu, xa);
}

/* out channel c = input channel src[c] subsampled by S, or zeros where src[c] < 0 */
static void gather(const float* in, int IH, int IW, const int* src, int CO, int S, float* out, int OH, int OW) {
  const int IPW = IW + 2, IPH = IH + 2, OPW = OW + 2, OPH = OH + 2;
  for (int c = 0; c < CO; c++) {
    for (int y = 0; y < OH; y++) {
      float* o = out + ((size_t)c * OPH + y + 1) * OPW + 1;
      if (src[c] < 0) { memset(o, 0, sizeof(float) * OW); continue; }
      const float* r = in + ((size_t)src[c] * IPH + (size_t)y * S + 1) * IPW + 1;
      for (int x = 0; x < OW; x++) o[x] = r[x * S];
    }
  }
}

static void pool(const float* in, int C, int H, int W, float* out) {
  for (int c = 0; c < C; c++) {
    float s = 0.0f;
    for (int y = 0; y < H; y++) {
      const float* r = in + ((size_t)c * (H + 2) + y + 1) * (W + 2) + 1;
      for (int x = 0; x < W; x++) s += r[x];
    }
    out[c] = s / (float)(H * W);
  }
}

enum { OP_CONV = 0, OP_GATHER = 1, OP_POOL = 2 };
enum { F_OP, F_IN, F_OUT, F_RES, F_CI, F_IH, F_IW, F_CO, F_OH, F_OW, F_K, F_S, F_RELU, F_PARAM, F_TILE, NF };

typedef struct {
  int in_c, in_h, in_w, out_buf, out_vec, out_c, out_h, out_w, n_ops;
  const int* ops;
  float** bufs;
  const void** params;
} Plan;

/* ops: n_ops x NF ints; bufs: padded activation planes (buffer 0 holds the input); params: weights/biases per conv
   (2 entries) or the source index per gather (1 entry). The output is buffer out_buf: spatial (copied without
   padding) or, out_vec, a vector of out_c values. */
void run(int n, const float* x, float* y, const Plan* p) {
  const int in_c = p->in_c, in_h = p->in_h, in_w = p->in_w, out_buf = p->out_buf, out_vec = p->out_vec;
  const int out_c = p->out_c, out_h = p->out_h, out_w = p->out_w, n_ops = p->n_ops;
  const int* ops = p->ops;
  float** bufs = p->bufs;
  const void** params = p->params;
  const size_t in_size = (size_t)in_c * in_h * in_w;
  const size_t out_size = out_vec ? (size_t)out_c : (size_t)out_c * out_h * out_w;
  for (int i = 0; i < n; i++) {
    const float* xi = x + i * in_size;
    for (int c = 0; c < in_c; c++)
      for (int r = 0; r < in_h; r++)
        memcpy(bufs[0] + ((size_t)c * (in_h + 2) + r + 1) * (in_w + 2) + 1, xi + ((size_t)c * in_h + r) * in_w,
               sizeof(float) * in_w);
    for (int k = 0; k < n_ops; k++) {
      const int* o = ops + k * NF;
      const float* res = o[F_RES] >= 0 ? bufs[o[F_RES]] : NULL;
      if (o[F_OP] == OP_CONV) {
        conv(bufs[o[F_IN]], o[F_CI], o[F_IH], o[F_IW], (const float*)params[o[F_PARAM]],
             (const float*)params[o[F_PARAM] + 1], o[F_CO], o[F_K], o[F_S], bufs[o[F_OUT]], o[F_OH], o[F_OW], res,
             o[F_RELU], o[F_TILE]);
      } else if (o[F_OP] == OP_GATHER) {
        gather(bufs[o[F_IN]], o[F_IH], o[F_IW], (const int*)params[o[F_PARAM]], o[F_CO], o[F_S], bufs[o[F_OUT]],
               o[F_OH], o[F_OW]);
      } else {
        pool(bufs[o[F_IN]], o[F_CI], o[F_IH], o[F_IW], bufs[o[F_OUT]]);
      }
    }
    float* yi = y + i * out_size;
    if (out_vec) {
      memcpy(yi, bufs[out_buf], sizeof(float) * out_c);
    } else {
      for (int c = 0; c < out_c; c++)
        for (int r = 0; r < out_h; r++)
          memcpy(yi + ((size_t)c * out_h + r) * out_w,
                 bufs[out_buf] + ((size_t)c * (out_h + 2) + r + 1) * (out_w + 2) + 1, sizeof(float) * out_w);
    }
  }
}
"""

NF = 15
TILES = (0, 1, 2, 3, 4, 5, 6)
"""Convolution kernels: scalar; for 3 × 3 stride 1, register tiles of 2 × 32, 4 × 16 and 8 × 8 (channels × columns
of one output row) and 2 × 16 × 2 rows; for 3 × 3 stride 2, 4 × 16 and 8 × 8."""
STRIDE_TILES = {1: (0, 1, 2, 3, 4), 2: (0, 5, 6)}
"""The kernels that apply to a 3 × 3 convolution of each stride."""
REUSE_BYTES = 1 << 20
"""Results up to this size may be written into the memory of a previous result nothing refers to any more
(FusedHead._result)."""


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    """Python's reference count of each array, as seen from here (one function for the baseline and the checks)."""
    return [sys.getrefcount(a) for a in arrays]


_UNREFERENCED = _refcounts([np.empty(1)])[0]
"""What :func:`_refcounts` gives for an array only its list refers to (measured: it differs between Python
versions)."""
OP_CONV, OP_GATHER, OP_POOL = 0, 1, 2


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$COINFERENCE_CACHE`` or ``~/.cache/coinference``)."""
    return Path(os.environ.get("COINFERENCE_CACHE", Path.home() / ".cache" / "coinference"))


_LIB: ctypes.CDLL | None = None


def _cpu_id() -> str:
    """The machine and CPU the library is built for (architecture, model and feature flags where readable)."""
    parts = [platform.machine(), platform.processor()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features", "CPU part")):
                parts.append(line)
                if len(parts) >= 4:
                    break
    except OSError:
        pass
    return "|".join(parts)


def library() -> ctypes.CDLL:
    """The compiled kernels (built on first use, then loaded from the cache folder).

    Raises:
        ConfigError: no C compiler, or it failed (its message is included).
    """
    global _LIB
    if _LIB is not None:
        return _LIB
    cc = os.environ.get("CC", "cc")
    command = shlex.split(cc)
    flags = ["-O3", "-march=native", "-std=gnu99", "-shared", "-fPIC"]
    # -march=native: a library built on one CPU may not run on another sharing the cache folder
    digest = hashlib.sha256("\0".join([C_SOURCE, cc, *flags, _cpu_id()]).encode()).hexdigest()[:16]
    path = cache_dir() / f"fused-{digest}.so"
    if not path.is_file():
        if not command or shutil.which(command[0]) is None:
            raise ConfigError(f"the fused runtime needs a C compiler: {cc!r} not found (set CC)")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            src = Path(tmp) / "fused.c"
            src.write_text(C_SOURCE)
            built = Path(tmp) / path.name
            done = subprocess.run([*command, *flags, str(src), "-o", str(built)], capture_output=True, text=True)
            if done.returncode != 0:
                raise ConfigError(f"compiling the fused runtime with {cc} failed: {done.stderr.strip()[:500]}")
            os.replace(built, path)  # atomic: a concurrent builder never loads a half-written library
    lib = ctypes.CDLL(str(path))
    lib.run.restype = None
    lib.run.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_Plan)]
    lib.conv.restype = None
    _LIB = lib
    return lib


class _Plan(ctypes.Structure):
    """The C side's ``Plan``: shapes, the op table and the buffer and parameter pointers."""

    _fields_ = [
        *[(f, ctypes.c_int) for f in ("in_c", "in_h", "in_w", "out_buf", "out_vec", "out_c", "out_h", "out_w")],
        ("n_ops", ctypes.c_int),
        ("ops", ctypes.POINTER(ctypes.c_int)),
        ("bufs", ctypes.POINTER(ctypes.c_void_p)),
        ("params", ctypes.POINTER(ctypes.c_void_p)),
    ]


@dataclass
class _Value:
    buf: int
    shape: tuple[int, ...]  # (C, H, W) or (C,)


def _device(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU when it has none)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights padded to a multiple of 8 output channels, bias) of ``conv`` with ``bn`` folded in."""
    f32 = torch.float32
    w = conv.weight.detach().to("cpu", f32)
    b = conv.bias.detach().to("cpu", f32) if conv.bias is not None else torch.zeros(w.shape[0], dtype=f32)
    if bn is not None:
        if bn.running_var is None or bn.running_mean is None:
            raise ConfigError(f"fused runtime: {bn} has no running statistics to fold")
        mean, var = bn.running_mean.detach().to("cpu", f32), bn.running_var.detach().to("cpu", f32)
        gamma = bn.weight.detach().to("cpu", f32) if bn.affine else torch.ones_like(b)
        shift = bn.bias.detach().to("cpu", f32) if bn.affine else torch.zeros_like(b)
        scale = gamma / torch.sqrt(var + bn.eps)
        w = w * scale[:, None, None, None]
        b = (b - mean) * scale + shift
    co = w.shape[0]
    pad = (-co) % 8
    w = torch.cat([w, w.new_zeros(pad, *w.shape[1:])]).contiguous()
    b = torch.cat([b, b.new_zeros(pad)]).contiguous()
    return w, b


class FusedHead(nn.Module):
    """``module`` compiled to the fused runtime for inputs of shape (C, H, W); call it like the module.

    Raises:
        ConfigError: a module the runtime does not support (named), or no C compiler.
    """

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], tile: int | None = None) -> None:
        super().__init__()
        if tile is not None and tile not in TILES:
            raise ConfigError(f"fused runtime: tile {tile} unknown; valid: {', '.join(map(str, TILES))}")
        self.tile = tile
        self.lib = library()
        self.input_shape = tuple(int(s) for s in input_shape)
        self._in_size = torch.Size(self.input_shape)
        self._ops: list[list[int]] = []
        self._params: list[torch.Tensor] = []  # kept alive: the C side holds their pointers
        self._bufs: list[tuple[int, ...]] = []
        self._free: dict[tuple[int, ...], list[int]] = {}
        self._lock = threading.Lock()  # one set of activation planes: one call at a time
        x = _Value(self._alloc(self.input_shape), self.input_shape)
        with eval_mode(module), torch.no_grad():  # the caller's train/eval modes come back afterwards
            self.output = self._walk(module, x)
            self._finish()
            probe = torch.randn(2, *self.input_shape, generator=torch.Generator().manual_seed(0))
            expected = module(probe.to(_device(module))).detach().to("cpu", torch.float32)
        if tuple(expected.shape[1:]) != self.output.shape:
            raise ConfigError(f"fused plan gives shape {self.output.shape}, the module {tuple(expected.shape[1:])}")
        got = self(probe)
        if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()) + 1e-5):
            # e.g. a subclass of a supported block with its own forward
            raise ConfigError(f"fused plan of {type(module).__name__} does not compute what the module computes")

    def _finish(self) -> None:
        self._planes = [torch.zeros(s, dtype=torch.float32) for s in self._bufs]
        self._buf_ptrs = (ctypes.c_void_p * len(self._planes))(*[t.data_ptr() for t in self._planes])
        self._param_ptrs = (ctypes.c_void_p * max(1, len(self._params)))(*[t.data_ptr() for t in self._params])
        flat = [v for op in self._ops for v in op]
        self._op_arr = (ctypes.c_int * max(1, len(flat)))(*flat)
        shape = self.output.shape
        h, w = (1, 1) if len(shape) == 1 else shape[1:]
        self._plan = _Plan(
            *self.input_shape, self.output.buf, int(len(shape) == 1), shape[0], h, w, len(self._ops),
            self._op_arr, self._buf_ptrs, self._param_ptrs,
        )  # fmt: skip
        self._plan_ref = ctypes.byref(self._plan)
        self._out_shape = tuple(shape)
        self._out_numel = math.prod(shape)
        self._run = self.lib.run
        self._slots: list[np.ndarray] = []  # the memory of the last two small results (see _result)

    # planning ------------------------------------------------------------------------------------------------
    def _alloc(self, shape: tuple[int, ...]) -> int:
        free = self._free.get(shape)
        if free:
            return free.pop()
        padded = (shape[0], shape[1] + 2, shape[2] + 2) if len(shape) == 3 else shape
        self._bufs.append(padded)
        return len(self._bufs) - 1

    def _release(self, v: _Value) -> None:
        if v.buf != 0:  # buffer 0 holds the input: never reused (the input copy writes it per image)
            self._free.setdefault(v.shape, []).append(v.buf)

    def _param(self, t: torch.Tensor) -> int:
        self._params.append(t)
        return len(self._params) - 1

    def _conv(self, conv: nn.Module, bn: nn.Module | None, x: _Value, relu: bool, res: _Value | None = None) -> _Value:
        if not isinstance(conv, nn.Conv2d) or not (bn is None or isinstance(bn, nn.BatchNorm2d)):
            raise ConfigError(f"fused runtime: expected Conv2d (+ BatchNorm2d), got {type(conv).__name__}")
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding
        ok = (conv.kernel_size, p) in (((3, 3), (1, 1)), ((1, 1), (0, 0))) and conv.stride in ((1, 1), (2, 2))
        if not ok or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ConfigError(f"fused runtime: unsupported convolution {conv}")
        if len(x.shape) != 3 or x.shape[0] != conv.in_channels:
            raise ConfigError(f"fused runtime: {conv} gets an input of shape {x.shape}")
        ci, ih, iw = x.shape
        oh, ow = (ih - 1) // s + 1, (iw - 1) // s + 1
        w, b = _fold(conv, bn)
        out = _Value(self._alloc((conv.out_channels, oh, ow)), (conv.out_channels, oh, ow))
        pi = self._param(w)
        self._param(b)
        rb = -1 if res is None else res.buf
        tile = self._pick_tile(w, b, ci, ih, iw, conv.out_channels, oh, ow, s) if k == 3 else 0
        op = [OP_CONV, x.buf, out.buf, rb, ci, ih, iw, conv.out_channels, oh, ow, k, s, int(relu), pi, tile]
        self._ops.append(op)
        return out

    def _pick_tile(
        self, w: torch.Tensor, b: torch.Tensor, ci: int, ih: int, iw: int, co: int, oh: int, ow: int, stride: int
    ) -> int:
        """The fastest kernel for this convolution on this CPU (fixed by ``tile``, else timed on one image: every
        kernel sums in the same order, so the choice never changes the outputs)."""
        if self.tile is not None:
            return self.tile
        # its own generator: building a plan leaves the caller's random numbers alone
        src = torch.randn(ci, ih + 2, iw + 2, generator=torch.Generator().manual_seed(0))
        dst = torch.zeros(w.shape[0], oh + 2, ow + 2, dtype=torch.float32)
        ptrs = [ctypes.c_void_p(t.data_ptr()) for t in (src, w, b, dst)]
        tiles = STRIDE_TILES[stride]
        best = dict.fromkeys(tiles, math.inf)
        for _ in range(9):  # rounds over all kernels, fastest run of each: a burst of load hits every kernel alike
            for tile in tiles:
                t0 = time.perf_counter()
                self.lib.conv(ptrs[0], ci, ih, iw, ptrs[1], ptrs[2], co, 3, stride, ptrs[3], oh, ow, None, 1, tile)
                best[tile] = min(best[tile], time.perf_counter() - t0)
        return min(tiles, key=best.__getitem__)

    def _gather(self, src: torch.Tensor, stride: int, x: _Value) -> _Value:
        c, h, w = x.shape
        oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
        shape = (len(src), oh, ow)
        out = _Value(self._alloc(shape), shape)
        pi = self._param(src.to("cpu", torch.int32).contiguous())
        self._ops.append([OP_GATHER, x.buf, out.buf, -1, c, h, w, len(src), oh, ow, 0, stride, 0, pi, 0])
        return out

    def _shortcut(self, sc: nn.Module, x: _Value) -> _Value | None:
        """The shortcut's output (None: the input itself)."""
        if (isinstance(sc, nn.Sequential) and len(sc) == 0) or isinstance(sc, nn.Identity):
            return None
        if isinstance(sc, ShortcutA):
            c = x.shape[0]
            src = torch.cat([torch.full((sc.pad,), -1), torch.arange(c), torch.full((sc.extra,), -1)])
            return self._gather(src, 2, x)
        if isinstance(sc, ChannelGather):
            src = torch.full((sc.out_channels,), -1, dtype=torch.long)
            src[sc.dst_index] = sc.src_index
            return self._gather(src, sc.stride, x)
        if isinstance(sc, nn.Sequential) and len(sc) == 2:
            return self._conv(sc[0], sc[1], x, relu=False)
        raise ConfigError(f"fused runtime: unsupported shortcut {type(sc).__name__}")

    def _walk(self, m: nn.Module, x: _Value) -> _Value:
        if isinstance(m, nn.Sequential):
            children = list(m)
            i = 0
            while i < len(children):
                child = children[i]
                if isinstance(child, nn.Conv2d):  # conv [+ BN] [+ ReLU], fused into one op
                    bn = children[i + 1] if i + 1 < len(children) else None
                    bn = bn if isinstance(bn, nn.BatchNorm2d) else None
                    j = i + 1 + (bn is not None)
                    relu = j < len(children) and isinstance(children[j], nn.ReLU)
                    y = self._conv(child, bn, x, relu=relu)
                    self._release(x)
                    x, i = y, j + relu
                else:
                    x, i = self._walk(child, x), i + 1
            return x
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, Stem | ConvBlock):
            y = self._conv(m.conv, m.bn, x, relu=True)
        elif isinstance(m, BasicBlock):
            h = self._conv(m.conv1, m.bn1, x, relu=True)
            sc = self._shortcut(m.shortcut, x)
            res = x if sc is None else sc
            if res.shape != (m.conv2.out_channels, *h.shape[1:]):
                raise ConfigError(f"fused runtime: shortcut of shape {res.shape} for a block output {h.shape}")
            y = self._conv(m.conv2, m.bn2, h, relu=True, res=res)
            self._release(h)
            if sc is not None:
                self._release(sc)
        elif isinstance(m, GlobalPool):
            if len(x.shape) != 3:
                raise ConfigError(f"fused runtime: GlobalPool gets an input of shape {x.shape}")
            y = _Value(self._alloc((x.shape[0],)), (x.shape[0],))
            self._ops.append([OP_POOL, x.buf, y.buf, -1, *x.shape, x.shape[0], 1, 1, 0, 0, 0, 0, 0])
        else:
            raise ConfigError(f"fused runtime: unsupported module {type(m).__name__}")
        self._release(x)
        return y

    # running -------------------------------------------------------------------------------------------------
    def _result(self, n: int) -> torch.Tensor:
        """A new (n, *output shape) tensor to write the result into. A fresh buffer is cold in the caches, which
        costs a shrunk head a tenth of its batch-1 latency, so a result of at most ``REUSE_BYTES`` gets the memory
        of one of the last two when nothing refers to that memory any more. The memory is a numpy array the result
        tensors are made from (``torch.from_numpy``); every tensor, view, storage, numpy array, DLPack capsule or
        autograd record made from a result keeps its storage alive, and the storage keeps a reference to the array,
        so the array is reused only once all of them are gone (a storage moved to shared memory lets go of it).
        Each call returns a new tensor object: nothing done to an earlier result's metadata carries over."""
        small = n * self._out_numel * 4 <= REUSE_BYTES
        if small:
            for a, refs in zip(self._slots, _refcounts(self._slots), strict=True):
                if refs == _UNREFERENCED and a.shape[0] == n:
                    return torch.from_numpy(a)
        a = np.empty((n, *self._out_shape), dtype=np.float32)
        if small:
            self._slots = [a, *self._slots[:1]]
        return torch.from_numpy(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self._in_size:  # (also catches a wrong number of dimensions)
            raise ConfigError(f"fused runtime: input shape {tuple(x.shape)}, expected (N, *{self.input_shape})")
        if not x.is_cpu:
            raise ConfigError(f"fused runtime: input on {x.device}, it runs on the CPU")
        if x.dtype is not torch.float32 or not x.is_contiguous():  # (cheap checks first: batch 1 costs µs)
            x = x.to(torch.float32).contiguous()
        n = x.shape[0]
        with self._lock:
            out = self._result(n)
            self._run(n, x.data_ptr(), out.data_ptr(), self._plan_ref)
        return out

    def replica(self) -> FusedHead:
        """Another runtime of the same plan and weights with its own activation and result memory: one
        :class:`FusedHead` runs one call at a time, a replica runs beside it in another thread."""
        other = copy.copy(self)
        other._lock = threading.Lock()
        other._finish()
        return other

    def run_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out[:] = self(x)`` for a contiguous float32 CPU input and output, (N, *input shape) and (N, *output
        shape), without a torch operation (the C code runs with the GIL released), so that replicas can run in
        threads of their own beside each other."""
        n = x.shape[0]
        for t, shape in ((x, self.input_shape), (out, self._out_shape)):
            if t.shape != (n, *shape) or t.dtype is not torch.float32 or not t.is_cpu or not t.is_contiguous():
                raise ConfigError(
                    f"fused runtime: run_into needs contiguous float32 CPU tensors of shape (N, *{shape}); "
                    f"got {tuple(t.shape)} {t.dtype} on {t.device}"
                )
        with self._lock:
            self._run(n, x.data_ptr(), out.data_ptr(), self._plan_ref)

    # A runtime, not a trainable layer: calls go straight to forward, skipping nn.Module's hook dispatch (~5 µs
    # per call, a tenth of a shrunk head's batch-1 latency). Forward hooks would not run: registering one fails.
    __call__ = forward

    def register_forward_hook(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("fused runtime: forward hooks are not run (calls skip nn.Module's hook dispatch)")

    def register_forward_pre_hook(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("fused runtime: forward pre-hooks are not run (calls skip nn.Module's hook dispatch)")


def _fused_batches(
    heads: list[FusedHead],
    data: ImageData,
    x_uint8: torch.Tensor,
    out: torch.Tensor,
    starts: list[int],
    bs: int,
    pool: ThreadPoolExecutor | None,
) -> None:
    """``out[i : i + bs] = head(normalised images)`` for each start ``i``, one replica in ``heads`` per worker of
    ``pool`` (None: one replica, in the calling thread)."""
    free: queue.SimpleQueue[FusedHead] = queue.SimpleQueue()
    for head in heads:
        free.put(head)

    def one(i: int) -> None:
        head = free.get()
        try:
            head.run_into(data.normalize(x_uint8[i : i + bs]).contiguous(), out[i : i + bs])
        finally:
            free.put(head)

    if pool is None:
        for i in starts:
            one(i)
    else:
        list(pool.map(one, starts))


@torch.no_grad()
def fused_outputs(
    model: nn.Module, data: ImageData, x_uint8: torch.Tensor, batch_size: int = INFERENCE_BATCH
) -> torch.Tensor:
    """:func:`coinference.evaluate.outputs` (the model's outputs for uint8 images, batched, in eval mode) from the
    fused runtime, one replica per thread (``torch.get_num_threads()``), or from eager PyTorch for a model the
    fused runtime does not support or cannot compile (no C compiler) and a model on another device.

    Which runtime runs depends on the model and the machine, never on a timing, and the fused runtime runs each
    image through the whole plan alone, summing in one fixed order: its outputs are the same bits whatever the
    thread count, the batch size or the machine's load. (The two runtimes sum in different orders: their outputs
    differ by a relative ~1e-6.) On a 2-core CPU it computed a pruned ResNet-20 head's outputs on 19,200 images
    2.65× faster than eager PyTorch (``bench/bench_variants.py --parts inference``, docs/RESULTS.md)."""
    n = len(x_uint8)
    if n == 0 or _device(model).type != "cpu" or len(x_uint8.shape) != 4:
        return outputs(model, data, x_uint8, batch_size)
    try:
        first = FusedHead(model, tuple(int(s) for s in x_uint8.shape[1:]))  # type: ignore[arg-type]
    except ConfigError:
        return outputs(model, data, x_uint8, batch_size)
    starts = list(range(0, n, batch_size))
    heads = [first] + [first.replica() for _ in range(min(torch.get_num_threads(), len(starts)) - 1)]
    out = torch.empty(n, *first.output.shape)
    # Each worker normalises its batches on one thread (in a trial, normalising every batch in the caller's thread
    # instead made the whole 1.4× slower). torch.set_num_threads also sets the process-wide default that threads
    # started later take up, so the caller's setting is put back once every batch is done.
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(len(heads), initializer=torch.set_num_threads, initargs=(1,)) if len(heads) > 1 else None
    try:
        _fused_batches(heads, data, x_uint8, out, starts, batch_size, pool)
    finally:
        if pool is not None:
            pool.shutdown()
            torch.set_num_threads(threads)
    return out
