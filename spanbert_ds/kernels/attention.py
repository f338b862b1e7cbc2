"""FlashAttention-2 in Triton: softmax(q k^T * scale + key-padding mask) v with dropout, forward and backward.

No T x T matrix ever reaches memory. The forward walks the keys block by block with an online softmax
(running max m and running sum l per query) and saves only the logsumexp per query; the backward
recomputes the probabilities from it (Dao, "FlashAttention-2", 2023):
    P = exp(S - lse),  dV = (P o Z)^T dO,  dP = (dO V^T) o Z,  dS = P o (dP - delta),  delta = rowsum(dO o O)
    dQ = scale dS K,   dK = scale dS^T Q
where Z is the dropout mask scaled by 1/(1-p). Z is never stored: tl.rand(seed, offset) (Philox) is a pure
function of the (batch*head, query, key) offset, so the backward regenerates exactly the forward's mask.
dK, dV come from one kernel that owns a key block and loops over queries, dQ from another that owns a query
block and loops over keys: no atomics, deterministic.

Two layouts share the kernels:
- padded: q, k, v (B, H, T, D) (any strides with a contiguous last dim) and a key-padding mask (B, T);
- varlen: packed q, k, v (total_tokens, H, D) and cu_seqlens (B+1) int32, the sequences back to back, so
  packed batches spend nothing on padding (ModernBERT's unpadded layout).
The kernels see a sequence as (batch offset, head offset, first token, length); for varlen the batch stride
is 0 and the first token is cu_seqlens[b]. Exponentials run in base 2 (exp2 is what the hardware has), so
the saved lse is in log2 units. A query whose keys are all padding gets zeros: its lse is stored as +inf,
which makes every recomputed probability 0 in the backward.

BIAS adds DeBERTa's relative terms to the scores, in either layout: C2P[i, r] + P2C[j, r] at the row
r = REL[i - j + T - 1] of the distance between query i and key j (T is max_seqlen for varlen), gathered
inside the kernels from tables laid out like q: (B, H, T, R) padded, (total_tokens, H, R) packed, read at
the sequence's first token like q. So no T x T matrix is made for them either; their gradients (dS summed
over the pairs that read each entry) are atomic adds.
"""

import math
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_AUTOTUNE = os.environ.get("SPANBERT_DS_AUTOTUNE", "1") != "0"  # 0: each kernel's first config, no tuning
_LOG2E = 1.4426950408889634
# Triton 3.9's interpreter multiplies bf16 tiles as their raw uint16 bits in tl.dot; feeding it fp32 copies
# computes what the GPU computes (bf16 products are exact in fp32, accumulation is fp32).
_DOT_IN_FP32 = tl.constexpr(_INTERPRET)


def _configs():
    if _INTERPRET:  # the interpreter is sequential: one small config that still crosses block edges
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    # a handful, so that tuning a new shape costs seconds: (BLOCK_M, BLOCK_N, num_warps, num_stages)
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in ((128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                                  (128, 128, 8, 2), (64, 32, 4, 4))]
    return configs if _AUTOTUNE else configs[:1]


def _bwd_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in ((64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3), (32, 64, 4, 3),
                                  (64, 128, 8, 2), (128, 64, 8, 2), (32, 128, 4, 2))]
    return configs if _AUTOTUNE else configs[:1]


# T_BUCKET (T rounded up to a power of 2) rather than T: varlen batches change max_seqlen every step and
# must not re-tune each time
_KEY = ["T_BUCKET", "BLOCK_D", "HAS_MASK", "DROPOUT", "BIAS"]


@triton.jit
def _dot(a, b):
    if _DOT_IN_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b)


@triton.jit
def _sequence(CU, off_b, T, VARLEN: tl.constexpr):
    """(first token, length) of sequence off_b."""
    if VARLEN:
        start = tl.load(CU + off_b).to(tl.int64)
        seqlen = tl.load(CU + off_b + 1).to(tl.int64) - start
    else:
        start = off_b.to(tl.int64) * 0
        seqlen = start + T
    return start, seqlen


@triton.jit
def _keep(seed, rng_base, offs_q, offs_k, T, dropout_p):
    """Dropout keep mask for (query, key) pairs: a pure function of (seed, batch*head, query, key)."""
    return tl.rand(seed, rng_base + offs_q * T + offs_k) >= dropout_p


@triton.jit
def _relative_bias(C2P, P2C, REL, base, q_rows, k_rows, ok, s_ct, T):
    """DeBERTa's c2p + p2c terms of a tile, in log2 units like the scores: C2P[query, r] + P2C[key, r] at
    r = REL[query - key + T - 1], the row of their bucketed distance (C2P = scale q k_r^T and P2C = scale
    k q_r^T, each T x 2 * buckets, one layout: base is the (batch, head, first token) offset in both); and r."""
    index = tl.load(REL + (q_rows - k_rows) + T - 1, mask=ok, other=0)
    c2p = tl.load(C2P + base + q_rows.to(tl.int64) * s_ct + index, mask=ok, other=0.0)
    p2c = tl.load(P2C + base + k_rows.to(tl.int64) * s_ct + index, mask=ok, other=0.0)
    return (c2p.to(tl.float32) + p2c.to(tl.float32)) * 1.4426950408889634, index


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit(do_not_specialize=["seed"])
def _attn_fwd(Q, K, V, O, LSE, KPM, CU, C2P, P2C, REL,
              s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot, s_lb, s_lh, s_mb,
              s_cb, s_ch, s_ct,
              H, T, T_BUCKET, D: tl.constexpr, qk_scale, dropout_p, seed,
              HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr, BIAS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    pid_bh = off_b * H + off_h
    start, seqlen = _sequence(CU, off_b, T, VARLEN)
    if pid_m * BLOCK_M >= seqlen:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen
    d_ok = offs_d < D

    ob = off_b.to(tl.int64)
    oh = off_h.to(tl.int64)
    q = tl.load(Q + ob * s_qb + oh * s_qh + (start + offs_m)[:, None] * s_qt + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # (M, D)
    k_base = K + ob * s_kb + oh * s_kh + start * s_kt
    v_base = V + ob * s_vb + oh * s_vh + start * s_vt
    c_base = ob * s_cb + oh * s_ch + start * s_ct  # C2P/P2C rows of this sequence (start = 0 when padded)
    rng_base = pid_bh.to(tl.int64) * T * T
    inv_keep = 1.0 / (1.0 - dropout_p)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seqlen, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < seqlen
        kt = tl.load(k_base + cols[None, :] * s_kt + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
        v = tl.load(v_base + cols[:, None] * s_vt + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # (N, D)
        s = _dot(q, kt) * qk_scale  # (M, N), log2 units
        if BIAS:
            bias, _ = _relative_bias(C2P, P2C, REL, c_base, offs_m[:, None], cols[None, :],
                                     m_ok[:, None] & n_ok[None, :], s_ct, T)
            s += bias
        valid = n_ok
        if HAS_MASK:
            valid = valid & (tl.load(KPM + ob * s_mb + cols, mask=n_ok, other=0) != 0)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked: avoid inf - inf
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:  # the normaliser l uses the undropped p; only what reaches v is dropped
            keep = _keep(seed, rng_base, offs_m[:, None], cols[None, :], T, dropout_p)
            p = tl.where(keep, p * inv_keep, 0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v)
        m_i = m_new

    empty = l_i == 0.0  # every key padded
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(O + ob * s_ob + oh * s_oh + (start + offs_m)[:, None] * s_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + ob * s_lb + oh * s_lh + start + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, s_ob, s_oh, s_ot, s_db, s_dh, s_dt, s_lb, s_lh, CU, H, T, D: tl.constexpr,
                    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, the softmax backward's per-row term
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    start, seqlen = _sequence(CU, off_b, T, VARLEN)
    if pid_m * BLOCK_M >= seqlen:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen
    mask = m_ok[:, None] & (offs_d < D)[None, :]
    ob = off_b.to(tl.int64)
    oh = off_h.to(tl.int64)
    rows = (start + offs_m)[:, None]
    o = tl.load(O + ob * s_ob + oh * s_oh + rows * s_ot + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + ob * s_db + oh * s_dh + rows * s_dt + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + ob * s_lb + oh * s_lh + start + offs_m, delta, mask=m_ok)


@triton.autotune(configs=_bwd_configs(), key=_KEY)
@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, KPM, CU, C2P, P2C, REL, DP2C,
                   s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
                   s_dkb, s_dkh, s_dkt, s_dvb, s_dvh, s_dvt, s_lb, s_lh, s_mb, s_cb, s_ch, s_ct,
                   H, T, T_BUCKET, D: tl.constexpr, qk_scale, sm_scale, dropout_p, seed,
                   HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr, BIAS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program owns a block of keys and walks all queries; works on transposed tiles (keys x queries)
    pid_n = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    pid_bh = off_b * H + off_h
    start, seqlen = _sequence(CU, off_b, T, VARLEN)
    if pid_n * BLOCK_N >= seqlen:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < seqlen
    d_ok = offs_d < D
    nd_mask = n_ok[:, None] & d_ok[None, :]
    ob = off_b.to(tl.int64)
    oh = off_h.to(tl.int64)

    k = tl.load(K + ob * s_kb + oh * s_kh + (start + offs_n)[:, None] * s_kt + offs_d[None, :],
                mask=nd_mask, other=0.0)  # (N, D)
    v = tl.load(V + ob * s_vb + oh * s_vh + (start + offs_n)[:, None] * s_vt + offs_d[None, :],
                mask=nd_mask, other=0.0)
    valid = n_ok
    if HAS_MASK:
        valid = valid & (tl.load(KPM + ob * s_mb + offs_n, mask=n_ok, other=0) != 0)
    q_base = Q + ob * s_qb + oh * s_qh + start * s_qt
    do_base = DO + ob * s_db + oh * s_dh + start * s_dt
    l_base = ob * s_lb + oh * s_lh + start
    c_base = ob * s_cb + oh * s_ch + start * s_ct
    rng_base = pid_bh.to(tl.int64) * T * T
    inv_keep = 1.0 / (1.0 - dropout_p)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, seqlen, BLOCK_M):
        rows = start_m + offs_m
        m_ok = rows < seqlen
        qt = tl.load(q_base + rows[None, :] * s_qt + offs_d[:, None],
                     mask=m_ok[None, :] & d_ok[:, None], other=0.0)  # (D, M)
        do = tl.load(do_base + rows[:, None] * s_dt + offs_d[None, :],
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # (M, D)
        lse = tl.load(LSE + l_base + rows, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + l_base + rows, mask=m_ok, other=0.0)
        st = _dot(k, qt) * qk_scale  # (N, M) = S^T, log2 units
        if BIAS:
            tile_ok = n_ok[:, None] & m_ok[None, :]
            bias, index = _relative_bias(C2P, P2C, REL, c_base, rows[None, :], offs_n[:, None], tile_ok, s_ct, T)
            st += bias
        pt = tl.math.exp2(st - lse[None, :])  # (N, M) = P^T
        pt = tl.where(valid[:, None], pt, 0.0)
        dpt = _dot(v, tl.trans(do))  # (N, M) = (dO V^T)^T
        if DROPOUT:
            keep = _keep(seed, rng_base, rows[None, :], offs_n[:, None], T, dropout_p)
            pt_drop = tl.where(keep, pt * inv_keep, 0.0)
            dpt = tl.where(keep, dpt * inv_keep, 0.0)
        else:
            pt_drop = pt
        dv += _dot(pt_drop.to(do.dtype), do)
        dst = pt * (dpt - delta[None, :])
        dk += _dot(dst.to(qt.dtype), tl.trans(qt))
        if BIAS:  # the p2c term of score (i, j) is P2C[j, r]: its gradient is dS[i, j], summed over the i at r
            tl.atomic_add(DP2C + c_base + offs_n[:, None].to(tl.int64) * s_ct + index, dst,
                          mask=tile_ok & valid[:, None])

    dk = dk * sm_scale
    tl.store(DK + ob * s_dkb + oh * s_dkh + (start + offs_n)[:, None] * s_dkt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=nd_mask)
    tl.store(DV + ob * s_dvb + oh * s_dvh + (start + offs_n)[:, None] * s_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=nd_mask)


@triton.autotune(configs=_bwd_configs(), key=_KEY)
@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, KPM, CU, C2P, P2C, REL, DC2P,
                 s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
                 s_dqb, s_dqh, s_dqt, s_lb, s_lh, s_mb, s_cb, s_ch, s_ct,
                 H, T, T_BUCKET, D: tl.constexpr, qk_scale, sm_scale, dropout_p, seed,
                 HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr, BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program owns a block of queries and walks all keys
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    pid_bh = off_b * H + off_h
    start, seqlen = _sequence(CU, off_b, T, VARLEN)
    if pid_m * BLOCK_M >= seqlen:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen
    d_ok = offs_d < D
    md_mask = m_ok[:, None] & d_ok[None, :]
    ob = off_b.to(tl.int64)
    oh = off_h.to(tl.int64)

    q = tl.load(Q + ob * s_qb + oh * s_qh + (start + offs_m)[:, None] * s_qt + offs_d[None, :],
                mask=md_mask, other=0.0)
    do = tl.load(DO + ob * s_db + oh * s_dh + (start + offs_m)[:, None] * s_dt + offs_d[None, :],
                 mask=md_mask, other=0.0)
    lse = tl.load(LSE + ob * s_lb + oh * s_lh + start + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + ob * s_lb + oh * s_lh + start + offs_m, mask=m_ok, other=0.0)
    k_base = K + ob * s_kb + oh * s_kh + start * s_kt
    v_base = V + ob * s_vb + oh * s_vh + start * s_vt
    c_base = ob * s_cb + oh * s_ch + start * s_ct
    rng_base = pid_bh.to(tl.int64) * T * T
    inv_keep = 1.0 / (1.0 - dropout_p)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seqlen, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < seqlen
        kt = tl.load(k_base + cols[None, :] * s_kt + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
        vt = tl.load(v_base + cols[None, :] * s_vt + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
        valid = n_ok
        if HAS_MASK:
            valid = valid & (tl.load(KPM + ob * s_mb + cols, mask=n_ok, other=0) != 0)
        s = _dot(q, kt) * qk_scale  # (M, N), log2 units
        if BIAS:
            tile_ok = m_ok[:, None] & n_ok[None, :]
            bias, index = _relative_bias(C2P, P2C, REL, c_base, offs_m[:, None], cols[None, :], tile_ok, s_ct, T)
            s += bias
        p = tl.math.exp2(s - lse[:, None])  # (M, N)
        p = tl.where(valid[None, :], p, 0.0)
        dp = _dot(do, vt)  # (M, N)
        if DROPOUT:
            keep = _keep(seed, rng_base, offs_m[:, None], cols[None, :], T, dropout_p)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(kt.dtype), tl.trans(kt))
        if BIAS:  # the c2p term of score (i, j) is C2P[i, r]: its gradient is dS[i, j], summed over the j at r
            tl.atomic_add(DC2P + c_base + offs_m[:, None].to(tl.int64) * s_ct + index, ds,
                          mask=tile_ok & valid[None, :])

    dq = dq * sm_scale
    tl.store(DQ + ob * s_dqb + oh * s_dqh + (start + offs_m)[:, None] * s_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=md_mask)


# ---------------------------------------------------------------------------------------------------
# Launchers: a "layout" is how the kernels see one of the two tensor layouts.

def _strides(x, varlen):
    """(batch, head, token) strides of a (B, H, T, D) or packed (total, H, D) tensor."""
    if varlen:
        return 0, x.stride(1), x.stride(0)
    return x.stride(0), x.stride(1), x.stride(2)


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _block_d(d):
    return max(16, triton.next_power_of_2(d))  # tl.dot needs at least 16


def _bias_args(bias, like, varlen):
    """(C2P, P2C, REL) and their (batch, head, token) strides, or placeholders when there is no bias. The
    tables are contiguous and laid out alike (and so are their fp32 gradients): one set of strides for all."""
    if bias is None:
        return (like, like, like), (0, 0, 0)
    return bias, _strides(bias[0], varlen)


def _forward(q, k, v, kpm, cu, batch, heads, t_max, dropout_p, scale, seed, bias=None):
    varlen = cu is not None
    d = q.shape[-1]
    o = torch.empty_like(q)
    if varlen:
        lse = torch.empty(heads, q.shape[0], dtype=torch.float32, device=q.device)
        s_l = (0, lse.stride(0))
    else:
        lse = torch.empty(batch, heads, t_max, dtype=torch.float32, device=q.device)
        s_l = (lse.stride(0), lse.stride(1))
    if t_max == 0 or batch == 0:
        return o.zero_(), lse
    grid = lambda meta: (triton.cdiv(t_max, meta["BLOCK_M"]), batch, heads)  # noqa: E731
    tensors, s_c = _bias_args(bias, q, varlen)
    _attn_fwd[grid](q, k, v, o, lse, kpm if kpm is not None else q, cu if varlen else q, *tensors,
                    *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(o, varlen),
                    *s_l, kpm.stride(0) if kpm is not None else 0, *s_c,
                    heads, t_max, triton.next_power_of_2(t_max), d, scale * _LOG2E, dropout_p, seed,
                    HAS_MASK=kpm is not None, VARLEN=varlen, DROPOUT=dropout_p > 0.0, BIAS=bias is not None,
                    BLOCK_D=_block_d(d))
    return o, lse


def _backward(do, q, k, v, o, lse, kpm, cu, batch, heads, t_max, dropout_p, scale, seed, bias=None):
    """dq, dk, dv, and with a bias (C2P, P2C, REL) also dC2P and dP2C (fp32)."""
    varlen = cu is not None
    d = q.shape[-1]
    do = _last_dim_contiguous(do)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    d_bias = () if bias is None else (torch.zeros(bias[0].shape, dtype=torch.float32, device=q.device),
                                      torch.zeros(bias[1].shape, dtype=torch.float32, device=q.device))
    if t_max == 0 or batch == 0:
        return (dq.zero_(), dk.zero_(), dv.zero_(), *d_bias)
    tensors, s_c = _bias_args(bias, q, varlen)
    dc2p, dp2c = d_bias if bias is not None else (q, q)
    s_l = (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))
    delta = torch.empty_like(lse)
    block_d = _block_d(d)
    cu_arg = cu if varlen else q
    kpm_arg = kpm if kpm is not None else q
    s_m = kpm.stride(0) if kpm is not None else 0
    block_m = 16 if _INTERPRET else 64
    _attn_bwd_delta[(triton.cdiv(t_max, block_m), batch, heads)](
        o, do, delta, *_strides(o, varlen), *_strides(do, varlen), *s_l, cu_arg, heads, t_max, d,
        VARLEN=varlen, BLOCK_M=block_m, BLOCK_D=block_d)
    common = dict(HAS_MASK=kpm is not None, VARLEN=varlen, DROPOUT=dropout_p > 0.0, BIAS=bias is not None,
                  BLOCK_D=block_d)
    args = (heads, t_max, triton.next_power_of_2(t_max), d, scale * _LOG2E, scale, dropout_p, seed)
    grid_n = lambda meta: (triton.cdiv(t_max, meta["BLOCK_N"]), batch, heads)  # noqa: E731
    _attn_bwd_dkdv[grid_n](q, k, v, do, dk, dv, lse, delta, kpm_arg, cu_arg, *tensors, dp2c,
                           *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen),
                           *_strides(do, varlen), *_strides(dk, varlen), *_strides(dv, varlen), *s_l, s_m, *s_c,
                           *args, **common)
    grid_m = lambda meta: (triton.cdiv(t_max, meta["BLOCK_M"]), batch, heads)  # noqa: E731
    _attn_bwd_dq[grid_m](q, k, v, do, dq, lse, delta, kpm_arg, cu_arg, *tensors, dc2p,
                         *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen),
                         *_strides(do, varlen), *_strides(dq, varlen), *s_l, s_m, *s_c, *args, **common)
    return (dq, dk, dv, *d_bias)


def _draw_seed(dropout_p):
    # from torch's CPU generator: torch.manual_seed makes it reproducible and activation checkpointing,
    # which restores the CPU RNG state, recomputes the same mask
    return int(torch.randint(0, 2**31 - 1, (1,)).item()) if dropout_p > 0.0 else 0


def _check_dropout(dropout_p):
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention dropout_p must be in [0, 1), got {dropout_p}")


class FlashAttention(torch.autograd.Function):
    """Padded layout: q, k, v (B, H, T, D), key_padding_mask bool (B, T) with True for real tokens."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, dropout_p, scale, seed):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        batch, heads, t_max, _ = q.shape
        kpm = None
        if key_padding_mask is not None:
            kpm = key_padding_mask.to(device=q.device, dtype=torch.bool).contiguous().view(torch.uint8)
        o, lse = _forward(q, k, v, kpm, None, batch, heads, t_max, dropout_p, scale, seed)
        ctx.save_for_backward(q, k, v, o, lse, kpm)
        ctx.args = (batch, heads, t_max, dropout_p, scale, seed)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kpm = ctx.saved_tensors
        batch, heads, t_max, dropout_p, scale, seed = ctx.args
        dq, dk, dv = _backward(do, q, k, v, o, lse, kpm, None, batch, heads, t_max, dropout_p, scale, seed)
        return dq, dk, dv, None, None, None, None


class FlashAttentionVarlen(torch.autograd.Function):
    """Packed layout: q, k, v (total_tokens, H, D), cu_seqlens int32 (B+1), sequences back to back."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, seed):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        batch, heads = cu.numel() - 1, q.shape[1]
        o, lse = _forward(q, k, v, None, cu, batch, heads, max_seqlen, dropout_p, scale, seed)
        ctx.save_for_backward(q, k, v, o, lse, cu)
        ctx.args = (batch, heads, max_seqlen, dropout_p, scale, seed)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu = ctx.saved_tensors
        batch, heads, t_max, dropout_p, scale, seed = ctx.args
        dq, dk, dv = _backward(do, q, k, v, o, lse, None, cu, batch, heads, t_max, dropout_p, scale, seed)
        return dq, dk, dv, None, None, None, None, None


class DisentangledFlashAttention(torch.autograd.Function):
    """DeBERTa's relative terms, in either layout: the scores are q k^T * scale + C2P[i, r] + P2C[j, r] at
    r = rel_index[i - j + T - 1]. Padded: q, k, v (B, H, T, D), C2P, P2C (B, H, T, R) and a key padding mask;
    packed (cu_seqlens given): q, k, v (total_tokens, H, D), C2P, P2C (total_tokens, H, R) and T = max_seqlen.
    C2P, P2C come in scaled, and get their gradients (through atomic adds, so their summation order is not
    fixed)."""

    @staticmethod
    def forward(ctx, q, k, v, c2p, p2c, rel_index, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, scale, seed):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        c2p, p2c = c2p.contiguous(), p2c.contiguous()
        rel = rel_index.to(device=q.device, dtype=torch.int32).contiguous()
        kpm = cu = None
        if cu_seqlens is not None:
            cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
            batch, heads, t_max = cu.numel() - 1, q.shape[1], max_seqlen
        else:
            batch, heads, t_max, _ = q.shape
        if key_padding_mask is not None:
            kpm = key_padding_mask.to(device=q.device, dtype=torch.bool).contiguous().view(torch.uint8)
        o, lse = _forward(q, k, v, kpm, cu, batch, heads, t_max, dropout_p, scale, seed, (c2p, p2c, rel))
        ctx.save_for_backward(q, k, v, o, lse, kpm, cu, c2p, p2c, rel)
        ctx.args = (batch, heads, t_max, dropout_p, scale, seed)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kpm, cu, c2p, p2c, rel = ctx.saved_tensors
        batch, heads, t_max, dropout_p, scale, seed = ctx.args
        dq, dk, dv, dc2p, dp2c = _backward(do, q, k, v, o, lse, kpm, cu, batch, heads, t_max, dropout_p, scale, seed,
                                           (c2p, p2c, rel))
        return dq, dk, dv, dc2p.to(c2p.dtype), dp2c.to(p2c.dtype), None, None, None, None, None, None, None


def _scale_and_seed(q, dropout_p, scale, seed):
    """The checked defaults of every entry point: scale 1/sqrt(D), and the dropout seed drawn when None."""
    _check_dropout(dropout_p)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return scale, _draw_seed(dropout_p) if seed is None else int(seed)


def flash_disentangled_attention(q, k, v, c2p, p2c, rel_index, key_padding_mask=None, dropout_p=0.0, scale=None,
                                 seed=None):
    """DeBERTa's attention without T x T matrices: q, k, v (B, H, T, D); c2p = scale q k_r^T and
    p2c = scale k q_r^T (B, H, T, R); rel_index int (2T - 1,): the row of R for each distance i - j, at
    i - j + T - 1."""
    scale, seed = _scale_and_seed(q, dropout_p, scale, seed)
    return DisentangledFlashAttention.apply(q, k, v, c2p, p2c, rel_index, key_padding_mask, None, None,
                                            float(dropout_p), scale, seed)


def flash_disentangled_attention_varlen(q, k, v, c2p, p2c, rel_index, cu_seqlens, max_seqlen, dropout_p=0.0,
                                        scale=None, seed=None):
    """The same on packed sequences: q, k, v (total_tokens, H, D) and c2p, p2c (total_tokens, H, R), the
    sequences back to back as cu_seqlens (B+1) says; rel_index (2 max_seqlen - 1,), the row for each
    distance i - j at i - j + max_seqlen - 1, so one index serves every sequence of the batch."""
    scale, seed = _scale_and_seed(q, dropout_p, scale, seed)
    return DisentangledFlashAttention.apply(q, k, v, c2p, p2c, rel_index, None, cu_seqlens, int(max_seqlen),
                                            float(dropout_p), scale, seed)


def flash_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None, seed=None):
    """softmax(q k^T * scale + mask) v for q, k, v (B, H, T, D); key_padding_mask bool (B, T), True = real.

    seed: the dropout seed (drawn from torch's CPU generator when None).
    """
    scale, seed = _scale_and_seed(q, dropout_p, scale, seed)
    return FlashAttention.apply(q, k, v, key_padding_mask, float(dropout_p), scale, seed)


def flash_attention_varlen(q, k, v, cu_seqlens, max_seqlen=None, dropout_p=0.0, scale=None, seed=None):
    """The same on packed sequences: q, k, v (total_tokens, H, D), cu_seqlens (B+1) cumulative lengths
    starting at 0; max_seqlen the longest sequence (computed from cu_seqlens when None, a device sync)."""
    scale, seed = _scale_and_seed(q, dropout_p, scale, seed)
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
    return FlashAttentionVarlen.apply(q, k, v, cu_seqlens, int(max_seqlen), float(dropout_p), scale, seed)
