"""The mad-search models once more, in PyTorch, for the speed comparison.

Run by `cargo bench --bench torch` (benches/torch.rs), which creates the
virtual environment, sets the thread count and reads one JSON object per line
from stdout. Written for this project from the layer definitions in
`src/layers/` (mad-protocol section 3); nothing here is copied from another
code base.

Every primitive has the same parameters, shapes, mathematics and
initialisation distributions (protocol_init, Mamba's dt, GLA's Xavier) as its Rust
twin at the defaults of `Layer::default_for` (width 128). Where PyTorch has
a fused operator for the same computation, the PyTorch version uses it, since
that is what a researcher writing the model in PyTorch would get:

- softmax attention: `F.scaled_dot_product_attention` (mad-search builds the
  score matrix and masks it);
- Hyena's long convolution: FFT (`torch.fft.rfft`, differentiable); mad-search
  uses a Toeplitz matmul because Burn 0.21's FFT has no gradient;
- short depthwise convolutions: `F.conv1d(groups=channels)`.

Where the algorithm is mad-search's own (multi-head Hyena as
`(T * Q K^T) V`, the chunked scans of Mamba, linear and gated linear
attention), the PyTorch version runs the same algorithm. Mamba-2's SSM runs
in the chunked SSD form, the form its authors give for plain PyTorch
(mad-search runs the recurrence, a fused per-head scan), and so does
Gated DeltaNet's rule (the chunked WY form); grouped-query attention uses
SDPA's `enable_gqa`.

Usage: python models.py --layers "hyena swiglu hyena swiglu" [--batch 128
--seq 128 --width 128 --reps 3 --threads 2] [--layer-only]
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- helpers


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, eps 1e-5, learnable scale."""

    def __init__(self, d):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))
        self.eps = 1e-5

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.gamma


def split_heads(x, heads):
    """[b, t, d] -> [b, heads, t, d / heads]"""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x):
    """[b, heads, t, hd] -> [b, t, heads * hd]"""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def pad_seq(x, chunk):
    """Zero-pads dim 2 of [b, h, t, e] to a multiple of chunk."""
    t = x.shape[2]
    padded = -(-t // chunk) * chunk
    return x if padded == t else F.pad(x, (0, 0, 0, padded - t))


def soft_top_k(scores, k, sparse=False):
    """Router weights: scores below the k-th largest set to 0 (the
    reference's soft top-k) or -inf (sparse), then a softmax."""
    kth = scores.detach().topk(k, dim=-1).values[..., -1:]
    dropped = scores.detach() < kth
    return torch.softmax(scores.masked_fill(dropped, float("-inf") if sparse else 0.0), -1)


class ShortConv(nn.Module):
    """Depthwise causal conv with bias over [b, t, c]."""

    def __init__(self, channels, kernel):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels, padding=kernel - 1)

    def forward(self, x):
        t = x.shape[1]
        return self.conv(x.transpose(1, 2))[..., :t].transpose(1, 2)


def rotary(x, rotary_dim):
    """Non-interleaved rotary embedding (base 10000) on the first rotary_dim
    dims of [b, h, t, hd]."""
    t = x.shape[2]
    half = rotary_dim // 2
    inv = 10000.0 ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / rotary_dim)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], -1)


# ---------------------------------------------------------------- sequence mixers


class Attention(nn.Module):
    """With kv_heads < heads, grouped-query attention: query head i reads
    key/value head i // (heads // kv_heads), as src/layers/attention.rs (and
    as SDPA's enable_gqa)."""

    def __init__(self, d, heads, window=None, kv_heads=None):
        super().__init__()
        self.kv_heads = kv_heads or heads
        self.kv = self.kv_heads * (d // heads)
        self.qkv = nn.Linear(d, d + 2 * self.kv)
        self.out = nn.Linear(d, d)
        self.heads, self.window = heads, window

    def forward(self, x):
        b, t, d = x.shape
        h, hd = self.heads, d // self.heads
        q, k, v = self.qkv(x).split([d, self.kv, self.kv], -1)
        q, k, v = split_heads(q, h), split_heads(k, self.kv_heads), split_heads(v, self.kv_heads)
        q, k = rotary(q, hd), rotary(k, hd)
        gqa = {"enable_gqa": True} if self.kv_heads < h else {}
        if self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        else:
            i = torch.arange(t)
            lag = i[:, None] - i[None, :]
            mask = (lag >= 0) & (lag <= self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
        return self.out(merge_heads(y))


class FeatureMap(nn.Module):
    def __init__(self, hd):
        super().__init__()
        self.l1, self.l2 = nn.Linear(hd, hd), nn.Linear(hd, hd)

    def forward(self, x):
        return self.l1(x) * self.l2(x)


class LinearAttention(nn.Module):
    CHUNK = 64

    def __init__(self, d, heads):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(d, d, bias=False) for _ in range(4))
        hd = d // heads
        self.phi_q, self.phi_k = FeatureMap(hd), FeatureMap(hd)
        self.heads = heads

    def forward(self, x):
        q = self.phi_q(split_heads(self.q(x), self.heads))
        k = self.phi_k(split_heads(self.k(x), self.heads))
        v = split_heads(self.v(x), self.heads)
        b, h, t, dk = q.shape
        dv = v.shape[-1]
        c = self.CHUNK
        norm = (q * k.cumsum(2)).sum(-1, keepdim=True) + 1e-12
        if t <= c:
            y = (q @ k.transpose(2, 3)).tril() @ v
        else:
            n = -(-t // c)
            qc = pad_seq(q, c).view(b, h, n, c, dk)
            kc = pad_seq(k, c).view(b, h, n, c, dk)
            vc = pad_seq(v, c).view(b, h, n, c, dv)
            intra = (qc @ kc.transpose(3, 4)).tril() @ vc
            kv = kc.transpose(3, 4) @ vc
            inter = qc @ (kv.cumsum(2) - kv)
            y = (intra + inter).reshape(b, h, n * c, dv)[:, :, :t]
        return self.out(merge_heads(y / norm))


class GatedLinearAttention(nn.Module):
    CHUNK = 16

    def __init__(self, d, heads, rank=16):
        super().__init__()
        self.q, self.k, self.v, self.g = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gk_down = nn.Linear(d, rank, bias=False)
        self.gk_up = nn.Linear(rank, d)
        self.norm = RMSNorm(d // heads)
        self.out = nn.Linear(d, d, bias=False)
        self.heads = heads
        # As src/layers/gla.rs: Xavier-uniform with gain 2^-2.5 (biases zeroed
        # by protocol_init).
        for lin in (self.q, self.k, self.v, self.g, self.gk_down, self.gk_up, self.out):
            nn.init.xavier_uniform_(lin.weight, gain=2**-2.5)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        gate = F.silu(self.g(x))
        q = split_heads(self.q(x), self.heads) / math.sqrt(hd)
        k = split_heads(self.k(x), self.heads)
        v = split_heads(self.v(x), self.heads)
        gk = split_heads(F.logsigmoid(self.gk_up(self.gk_down(x))) / 16.0, self.heads)
        return self.out(merge_heads(self.norm(self.chunked(q, k, v, gk))) * gate)

    def chunked(self, q, k, v, gk):
        b, h, t, dk = q.shape
        dv = v.shape[-1]
        c = self.CHUNK
        n = -(-t // c)
        q = pad_seq(q, c).view(b, h, n, c, dk)
        k = pad_seq(k, c).view(b, h, n, c, dk)
        v = pad_seq(v, c).view(b, h, n, c, dv)
        cum = pad_seq(gk, c).view(b, h, n, c, dk).cumsum(3)
        causal = torch.ones(c, c, dtype=torch.bool).tril()
        diff = cum.unsqueeze(4) - cum.unsqueeze(3)
        diff = diff.masked_fill(~causal[:, :, None], float("-inf"))
        a = (q.unsqueeze(4) * diff.exp() * k.unsqueeze(3)).sum(-1)
        intra = a @ v
        last = cum[:, :, :, c - 1 :, :]
        local = (k * (last - cum).exp()).transpose(3, 4) @ v
        decay = last.exp().transpose(3, 4)
        state = q.new_zeros(b, h, dk, dv)
        entering = []
        for i in range(n):
            entering.append(state)
            state = state * decay[:, :, i] + local[:, :, i]
        inter = (q * cum.exp()) @ torch.stack(entering, 2)
        return (intra + inter).reshape(b, h, n * c, dv)[:, :, :t]


class HyenaFilter(nn.Module):
    """Implicit filter: positional features through a sine MLP, times an
    exponential decay window. forward(t) -> [channels, t]."""

    def __init__(self, channels, order, max_len):
        super().__init__()
        n = torch.arange(max_len, dtype=torch.float64)
        w = 2 * math.pi * 1e-4 * n / max_len
        t_den = max(max_len - 1, 1)
        self.z = nn.Parameter(torch.stack([n / t_den, w.cos(), -w.sin()], 1).float())
        self.l1, self.l2, self.l3 = nn.Linear(3, order), nn.Linear(order, order), nn.Linear(order, order)
        self.out = nn.Linear(order, channels, bias=False)
        self.freq = nn.Parameter(torch.ones(order))
        lo, hi = math.log(0.01) / 1.5, math.log(0.01) / 0.3
        delta = torch.linspace(lo, hi, channels, dtype=torch.float64).abs() if channels > 1 else torch.tensor([abs(lo)])
        self.register_buffer("window", (-(n / t_den)[:, None] * delta[None, :]).exp().float())

    def forward(self, t):
        h = torch.sin(self.freq * self.l1(self.z[:t]))
        h = torch.sin(self.freq * self.l2(h))
        h = torch.sin(self.freq * self.l3(h))
        return (self.out(h) * self.window[:t]).transpose(0, 1)


class HyenaFrontEnd(nn.Module):
    def __init__(self, d, inner, groups, kernel):
        super().__init__()
        self.in_proj = nn.Linear(d, 3 * inner // groups)
        self.short = ShortConv(3 * inner, kernel)
        self.groups = groups

    def forward(self, x):
        u = self.in_proj(x)
        if self.groups > 1:
            u = torch.cat([u] * self.groups, -1)
        return self.short(u).chunk(3, -1)


def fft_conv(v, h):
    """Causal convolution of v [b, t, c] with filters h [c, t], by FFT."""
    t = v.shape[1]
    vf = torch.fft.rfft(v, n=2 * t, dim=1)
    hf = torch.fft.rfft(h.transpose(0, 1), n=2 * t, dim=0)
    return torch.fft.irfft(vf * hf, n=2 * t, dim=1)[:, :t]


class Hyena(nn.Module):
    def __init__(self, d, seq, expansion=4, groups=4, order=4, kernel=3):
        super().__init__()
        inner = expansion * d
        self.front = HyenaFrontEnd(d, inner, groups, kernel)
        self.filter = HyenaFilter(inner, order, seq)
        self.skip = nn.Parameter(torch.randn(inner))
        self.out = nn.Linear(inner, d)

    def forward(self, x):
        x0, x1, v = self.front(x)
        v = v * x1
        y = fft_conv(v, self.filter(x.shape[1])) + v * self.skip
        return self.out(y * x0)


def toeplitz(h):
    """[c, t] -> [c, t, t] with out[c, i, j] = h[c, i - j] for j <= i, else 0."""
    c, t = h.shape
    i = torch.arange(t)
    lag = i[:, None] - i[None, :]
    return h[:, lag.clamp(min=0)] * (lag >= 0)


class MhHyena(nn.Module):
    def __init__(self, d, seq, heads=16, groups=4, order=2, kernel=3):
        super().__init__()
        self.front = HyenaFrontEnd(d, d, groups, kernel)
        self.filter = HyenaFilter(heads, order, seq)
        self.skip = nn.Parameter(torch.randn(heads))
        self.out = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x):
        t = x.shape[1]
        q, k, v = (split_heads(s, self.heads) for s in self.front(x))
        kernel = toeplitz(self.filter(t)) + torch.eye(t) * self.skip[:, None, None]
        return self.out(merge_heads(((q @ k.transpose(2, 3)) * kernel) @ v))


class HyenaExperts(nn.Module):
    def __init__(self, d, seq, experts=8, expert_dim=16, top_k=2, order=16, kernel=3):
        super().__init__()
        inner = experts * expert_dim
        self.front = HyenaFrontEnd(d, inner, 1, kernel)
        self.filter = HyenaFilter(inner, order, seq)
        self.skip = nn.Parameter(torch.randn(inner))
        self.router = nn.Linear(d, experts)
        self.out = nn.Linear(expert_dim, d)
        self.experts, self.top_k = experts, top_k

    def forward(self, x):
        b, t, _ = x.shape
        w = soft_top_k(self.router(x), self.top_k)
        x0, x1, v = self.front(x)
        v = v * x1
        y = (fft_conv(v, self.filter(t)) + v * self.skip) * x0
        y = (y.view(b, t, -1, self.experts) * w.unsqueeze(2)).sum(-1)
        return self.out(y)


class Mamba(nn.Module):
    CHUNK = 32

    def __init__(self, d, expand=2, d_state=4, d_conv=4):
        super().__init__()
        di, r = expand * d, -(-d // 16)
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        self.conv = ShortConv(di, d_conv)
        self.x_proj = nn.Linear(di, r + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(r, di)
        # As src/layers/mamba.rs: weights U(+-r^-1/2), softplus(bias)
        # log-uniform in [1e-3, 0.1] (floor 1e-4); protocol_init keeps it.
        nn.init.uniform_(self.dt_proj.weight, -(r**-0.5), r**-0.5)
        dt = torch.exp(torch.rand(di, dtype=torch.float64) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_((dt + torch.log(-torch.expm1(-dt))).float())
        self.dt_proj.bias.keep_init = True
        self.a_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(di, 1))
        self.skip = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)
        self.r, self.n = r, d_state

    def forward(self, x):
        xs, z = self.in_proj(x).chunk(2, -1)
        xs = F.silu(self.conv(xs))
        dt_in, bm, cm = self.x_proj(xs).split([self.r, self.n, self.n], -1)
        dt = F.softplus(self.dt_proj(dt_in))
        a = -self.a_log.exp()
        y = self.scan(xs, dt, a, bm, cm) + xs * self.skip
        return self.out_proj(y * F.silu(z))

    def scan(self, x, dt, a, bm, cm):
        """The same chunked parallel scan as src/layers/mamba.rs."""
        b, t, di = x.shape
        n = a.shape[1]
        c = min(self.CHUNK, t)
        nc = -(-t // c)
        padded = nc * c
        decay = (dt.unsqueeze(-1) * a).exp()
        inp = dt.unsqueeze(-1) * x.unsqueeze(-1) * bm.unsqueeze(2)
        if padded > t:
            decay = F.pad(decay, (0, 0, 0, 0, 0, padded - t), value=1.0)
            inp = F.pad(inp, (0, 0, 0, 0, 0, padded - t))
        da = decay.view(b, nc, c, di, n)
        db = inp.view(b, nc, c, di, n)
        off = 1
        while off < c:
            sa = F.pad(da[:, :, :-off], (0, 0, 0, 0, off, 0), value=1.0)
            sb = F.pad(db[:, :, :-off], (0, 0, 0, 0, off, 0))
            db = da * sb + db
            da = da * sa
            off *= 2
        carry = x.new_zeros(b, di, n)
        entering = []
        for i in range(nc):
            entering.append(carry)
            carry = da[:, i, -1] * carry + db[:, i, -1]
        h = da * torch.stack(entering, 1).unsqueeze(2) + db
        h = h.reshape(b, padded, di, n)[:, :t]
        return (h * cm.unsqueeze(2)).sum(-1)


def segsum(x):
    """[..., l] -> [..., l, l]: entry (i, j) is x[j+1] + ... + x[i] for
    j <= i (0 on the diagonal), -inf above it; summed as differences of
    masked cumulative sums, so no exp of a large positive number appears."""
    l = x.shape[-1]
    x = x[..., None].expand(*x.shape, l)
    below = torch.tril(torch.ones(l, l, dtype=torch.bool), -1)
    x = x.masked_fill(~below, 0.0)
    s = torch.cumsum(x, -2)
    return s.masked_fill(~torch.tril(torch.ones(l, l, dtype=torch.bool)), float("-inf"))


class Mamba2(nn.Module):
    """Mamba-2 as src/layers/mamba2.rs, its SSM in the chunked SSD form
    (block-diagonal products inside chunks, states carried between them),
    which is what a PyTorch user runs without the CUDA/Triton kernels."""

    CHUNK = 32

    def __init__(self, d, expand=2, d_state=16, d_conv=4, head_dim=32):
        super().__init__()
        di = expand * d
        self.heads, self.p, self.n, self.di = di // head_dim, head_dim, d_state, di
        self.in_proj = nn.Linear(d, 2 * di + 2 * d_state + self.heads, bias=False)
        self.conv = ShortConv(di + 2 * d_state, d_conv)
        dt = torch.exp(torch.rand(self.heads, dtype=torch.float64) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).float())
        self.a_log = nn.Parameter(torch.log(1.0 + 15.0 * torch.rand(self.heads)))
        self.skip = nn.Parameter(torch.ones(self.heads))
        self.norm = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        di, n, h = self.di, self.n, self.heads
        z, xbc, dt = self.in_proj(x).split([di, di + 2 * n, h], -1)
        xbc = F.silu(self.conv(xbc))
        xs, bm, cm = xbc.split([di, n, n], -1)
        dt = F.softplus(dt + self.dt_bias)
        xh = xs.view(b, t, h, self.p)
        y = self.ssd(xh, dt, -self.a_log.exp(), bm, cm) + xh * self.skip[:, None]
        g = y.reshape(b, t, di) * F.silu(z)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm
        return self.out_proj(g)

    def ssd(self, x, dt, a, bm, cm):
        """x [b, t, h, p], dt [b, t, h], a [h], bm, cm [b, t, n] -> [b, t, h, p]"""
        b, t, h, p = x.shape
        l = min(self.CHUNK, t)
        c = -(-t // l)
        pad = c * l - t
        xd = x * dt[..., None]
        adt = dt * a
        if pad:
            xd = F.pad(xd, (0, 0, 0, 0, 0, pad))
            adt = F.pad(adt, (0, 0, 0, pad))
            bm = F.pad(bm, (0, 0, 0, pad))
            cm = F.pad(cm, (0, 0, 0, pad))
        xd = xd.view(b, c, l, h, p)
        bm, cm = bm.view(b, c, l, -1), cm.view(b, c, l, -1)
        adt = adt.view(b, c, l, h).permute(0, 3, 1, 2)  # [b, h, c, l]
        cum = torch.cumsum(adt, -1)
        decay = torch.exp(segsum(adt))  # [b, h, c, l, l]
        scores = torch.einsum("bcln,bcsn->bcls", cm, bm)
        y = torch.einsum("bcls,bhcls,bcshp->bclhp", scores, decay, xd)
        to_end = torch.exp(cum[..., -1:] - cum)  # [b, h, c, l]
        states = torch.einsum("bcln,bhcl,bclhp->bchpn", bm, to_end, xd)
        states = torch.cat([torch.zeros_like(states[:, :1]), states], 1)
        across = torch.exp(segsum(F.pad(cum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
        entering = torch.einsum("bhzc,bchpn->bzhpn", across, states)[:, :-1]
        y = y + torch.einsum("bcln,bchpn,bhcl->bclhp", cm, entering, torch.exp(cum))
        return y.reshape(b, c * l, h, p)[:, :t]


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet as src/layers/deltanet.rs, its rule in the chunked WY
    form (the form its authors give; their fast kernels are Triton, GPU
    only): within a chunk the pseudo-values from (I + L)^-1, by repeated
    squaring, and the state carried between chunks."""

    CHUNK = 16

    def __init__(self, d, heads=4, expand_v=2, kernel=4):
        super().__init__()
        self.h, self.dk, self.dv = heads, d // heads, expand_v * d // heads
        width = 2 * d + expand_v * d
        self.qkv = nn.Linear(d, width, bias=False)
        self.conv = nn.Conv1d(width, width, kernel, groups=width, padding=kernel - 1, bias=False)
        self.a = nn.Linear(d, heads, bias=False)
        self.beta = nn.Linear(d, heads, bias=False)
        self.a_log = nn.Parameter(torch.log(16.0 * (1.0 - torch.rand(heads))))
        dt = torch.exp(torch.rand(heads, dtype=torch.float64) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).float())
        self.gate = nn.Linear(d, expand_v * d, bias=False)
        self.norm = nn.Parameter(torch.ones(self.dv))
        self.out = nn.Linear(expand_v * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h, dk, dv = self.h, self.dk, self.dv
        p = F.silu(self.conv(self.qkv(x).transpose(1, 2))[..., :t].transpose(1, 2))
        q, k, v = p.split([d, d, h * dv], -1)
        unit = lambda z: z * torch.rsqrt(z.pow(2).sum(-1, keepdim=True) + 1e-6)
        q = unit(q.view(b, t, h, dk)).transpose(1, 2) * dk**-0.5
        k = unit(k.view(b, t, h, dk)).transpose(1, 2)
        v = v.view(b, t, h, dv).transpose(1, 2)
        g = (-self.a_log.exp() * F.softplus(self.a(x) + self.dt_bias)).transpose(1, 2)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)
        o = self.rule(q, k, v, g, beta)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm
        return self.out(o.transpose(1, 2).reshape(b, t, h * dv) * F.silu(self.gate(x)))

    def rule(self, q, k, v, g, beta):
        """q, k [b, h, t, dk], v [b, h, t, dv], g, beta [b, h, t] -> [b, h, t, dv]"""
        b, h, t, dk = q.shape
        dv = v.shape[-1]
        c = min(self.CHUNK, t)
        n = -(-t // c)
        pad = n * c - t
        if pad:
            q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
            g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
        q, k, v = (z.reshape(b, h, n, c, -1) for z in (q, k, v))
        gamma = g.reshape(b, h, n, c).cumsum(-1)
        beta = beta.reshape(b, h, n, c)
        below = torch.tril(torch.ones(c, c, dtype=torch.bool))
        diff = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~below, -1e30)
        decay = diff.exp()
        strict = torch.tril(torch.ones(c, c), -1)
        nil = -(k @ k.transpose(-1, -2)) * decay * strict * beta[..., None]
        tri = torch.eye(c) + nil
        power, span = nil, 2
        while span < c:
            power = power @ power
            tri = tri + tri @ power
            span *= 2
        u = tri @ (v * beta[..., None])
        wk = tri @ (k * (beta * gamma.exp())[..., None])
        qk = (q @ k.transpose(-1, -2)) * decay
        q_gamma = q * gamma.exp()[..., None]
        last = gamma[..., -1:]
        k_to_end = k * (last - gamma).exp()[..., None]
        s = q.new_zeros(b, h, dk, dv)
        out = []
        for i in range(n):
            w = u[:, :, i] - wk[:, :, i] @ s
            out.append(q_gamma[:, :, i] @ s + qk[:, :, i] @ w)
            s = s * last[:, :, i, :, None].exp() + k_to_end[:, :, i].transpose(-1, -2) @ w
        return torch.cat(out, 2)[:, :, :t]


class GatedShortConv(nn.Module):
    """LFM2's gated short convolution, as src/layers/gated_conv.rs."""

    def __init__(self, d, kernel=3):
        super().__init__()
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.conv = nn.Conv1d(d, d, kernel, groups=d, padding=kernel - 1, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        t = x.shape[1]
        bg, cg, xs = self.in_proj(x).chunk(3, -1)
        y = self.conv((bg * xs).transpose(1, 2))[..., :t].transpose(1, 2)
        return self.out_proj(cg * y)


# ---------------------------------------------------------------- channel mixers


class SwiGlu(nn.Module):
    def __init__(self, d):
        super().__init__()
        inner = -(-(8 * d // 3) // 16) * 16
        self.w1, self.w2 = nn.Linear(d, inner, bias=False), nn.Linear(d, inner, bias=False)
        self.w3 = nn.Linear(inner, d, bias=False)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Mlp(nn.Module):
    def __init__(self, d, expansion=4):
        super().__init__()
        self.w1 = nn.Linear(d, expansion * d, bias=False)
        self.w2 = nn.Linear(expansion * d, d, bias=False)

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x), approximate="tanh"))


class MoeMlp(nn.Module):
    def __init__(self, d, experts=8, expert_dim=16, top_k=2):
        super().__init__()
        inner = experts * expert_dim
        self.u1, self.u2 = nn.Linear(d, inner, bias=False), nn.Linear(d, inner, bias=False)
        self.experts = nn.Linear(inner, d * experts, bias=False)
        self.router = nn.Linear(d, experts)
        self.n, self.top_k = experts, top_k

    def forward(self, x):
        b, t, d = x.shape
        w = soft_top_k(self.router(x), self.top_k)
        h = self.u1(x) * F.gelu(self.u2(x), approximate="tanh")
        z = self.experts(h).view(b, t, d, self.n)
        return (z * w.unsqueeze(2)).sum(-1)


# ---------------------------------------------------------------- models


def layer(name, d, seq):
    """The primitive `name` at the defaults of Layer::default_for."""
    return {
        "attention": lambda: Attention(d, 1),
        "mh-attention": lambda: Attention(d, 16),
        "sliding-attention": lambda: Attention(d, 1, window=32),
        "mh-sliding-attention": lambda: Attention(d, 16, window=32),
        "linear-attention": lambda: LinearAttention(d, 1),
        "mh-linear-attention": lambda: LinearAttention(d, 16),
        "gated-linear-attention": lambda: GatedLinearAttention(d, 1),
        "mh-gated-linear-attention": lambda: GatedLinearAttention(d, 8),
        "hyena": lambda: Hyena(d, seq),
        "mh-hyena": lambda: MhHyena(d, seq),
        "hyena-experts": lambda: HyenaExperts(d, seq),
        "mamba": lambda: Mamba(d),
        "mamba2": lambda: Mamba2(d),
        "gated-short-conv": lambda: GatedShortConv(d),
        "gated-deltanet": lambda: GatedDeltaNet(d),
        # Not a primitive of its own: mh-attention with kv_heads = 4.
        "mh-attention-kv4": lambda: Attention(d, 16, kv_heads=4),
        "swiglu": lambda: SwiGlu(d),
        "mlp": lambda: Mlp(d),
        "moe-mlp": lambda: MoeMlp(d),
    }[name]()


class Residual(nn.Module):
    def __init__(self, mixer, d):
        super().__init__()
        self.norm, self.mixer = RMSNorm(d), mixer

    def forward(self, x):
        return x + self.mixer(self.norm(x))


def protocol_init(module):
    """The protocol's initialisation (mad-protocol section 2.2), as
    src/layers/init.rs: every Linear bias zeroed except Mamba's dt bias;
    weights keep PyTorch's defaults, which Init::linear reproduces (GLA and
    Mamba's dt_proj set their own in their constructors, as in Rust)."""
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "keep_init", False):
            nn.init.zeros_(m.bias)


class Model(nn.Module):
    """Language model: embedding N(0, embedding_std) (the protocol's 0.02
    unless a preset says otherwise), pre-norm residual layers, final RMSNorm,
    linear head with bias; Linear biases zeroed (protocol_init)."""

    def __init__(self, names, d, seq, vocab, embedding_std=0.02):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        nn.init.normal_(self.embedding.weight, std=embedding_std)
        self.layers = nn.Sequential(*(Residual(layer(n, d, seq), d) for n in names))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab)
        protocol_init(self)

    def forward(self, tokens):
        return self.head(self.norm(self.layers(self.embedding(tokens))))


# ---------------------------------------------------------------- timing


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def layer_step(name, a):
    """Forward + backward of one layer on a [batch, seq, width] input."""
    m = layer(name, a.width, a.seq)
    x = torch.randn(a.batch, a.seq, a.width, requires_grad=True)

    def run():
        t0 = time.perf_counter()
        m(x).sum().backward()
        return time.perf_counter() - t0

    run()
    return median([run() for _ in range(a.reps)])


def model_step(names, a, vocab=16):
    """Forward + backward + AdamW step of a language model, as benches/layers.rs."""
    model = Model(names, a.width, a.seq, vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8)
    n = a.batch * a.seq
    tokens = (torch.arange(n) * 7 % vocab).view(a.batch, a.seq)
    targets = torch.arange(n) * 3 % vocab
    times = []
    for i in range(a.reps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(tokens).view(n, vocab), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", required=True)
    p.add_argument("--layer-only", action="store_true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    names = a.layers.replace(",", " ").split()
    secs = layer_step(names[0], a) if a.layer_only else model_step(names, a)
    print(json.dumps({"layers": a.layers, "ms": secs * 1e3, "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
