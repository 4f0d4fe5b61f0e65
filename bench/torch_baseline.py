#!/usr/bin/env python3
"""Plain PyTorch training loop for the same GPT and batch that `stp train` runs.

The baseline that bench/gpu_check.py puts next to stp's tokens/s: a standard nn.Module GPT with
the shapes of stp's default model (models/gpt_params.cpp, docs/model.md) -- token + position
embeddings, pre-LayerNorm blocks (causal self-attention with biases, GELU-tanh MLP), final
LayerNorm, untied head without bias, mean cross-entropy -- trained the way a PyTorch user would:
one optimizer step per `microbatches` forward/backward passes (gradient accumulation), global
grad-norm clip 1.0, AdamW(betas 0.9/0.95, weight decay 0.1 on matrices and embeddings only, as
stp). Nothing from stp is imported.

Precision (--precision, comma list; every precision runs with every attention kind):
  bf16-master  bf16 parameters and activations, a fp32 master copy with fp32 AdamW state, as stp
               does with model.dtype=bfloat16 (its gradients accumulate in fp32; here they are
               bf16 per micro-step and summed into the fp32 master gradient). The like-for-like
               recipe, and the default.
  autocast     fp32 parameters, gradients and AdamW state; matmuls in bf16 under torch.autocast
               (the standard PyTorch mixed-precision recipe: a labelled extra line).
  fp32         everything in fp32 (for checks on the CPU).
Attention (--attention, comma list; each runs in turn in this process):
  sdpa         F.scaled_dot_product_attention(is_causal=True) (flash/efficient kernels on GPUs):
               what stp's model runs (ATen's flash kernel for bf16, Note [Fused attention]).
  explicit     softmax(QK^T/sqrt(hd) + causal mask) V with the softmax in fp32, saving the
               (B, heads, T, T) probabilities: stp's attention before the fused kernels.

Each timed step is synchronised and measured with a host clock; the first --warmup steps are not
timed. Prints one JSON line per attention kind (also appended to --json-out):
  {"bench":"torch_baseline", ..., "step_seconds_median":..., "tokens_per_s":..., ...}
tokens_per_s = tokens per optimizer step / median step seconds, the figure gpu_check.py computes
for stp from metrics.jsonl. Exit status: 0 ok, 3 out of memory (the JSON line says so), 2 bad
arguments.

Examples:
  python3 bench/torch_baseline.py --device cuda --d-model 2048 --n-layers 16 --n-heads 16 \
      --seq-len 2048 --micro-batch-size 2 --microbatches 4 --steps 8 --warmup 2
  python3 bench/torch_baseline.py --device cpu --d-model 64 --n-layers 2 --n-heads 2 \
      --seq-len 32 --micro-batch-size 2 --microbatches 2 --steps 3 --warmup 1
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d_model, n_heads, hidden, attention):
        super().__init__()
        self.n_heads = n_heads
        self.attention = attention
        self.ln1 = nn.LayerNorm(d_model, eps=1e-5)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model, eps=1e-5)
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def attend(self, x):
        b, t, c = x.shape
        nh = self.n_heads
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(b, t, nh, c // nh).transpose(1, 2)  # (B, NH, T, hd)
        k = k.view(b, t, nh, c // nh).transpose(1, 2)
        v = v.view(b, t, nh, c // nh).transpose(1, 2)
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(c // nh))
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu_(1)
            scores = scores.masked_fill(mask, float("-inf"))
            probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
            y = torch.matmul(probs, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x):
        x = x + self.attend(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, seq_len, d_model, n_heads, n_layers, hidden, attention):
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, hidden, attention) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, vocab, bias=False)
        # stp's init: N(0, 0.02), residual projections / sqrt(2L), biases 0, LayerNorm 1/0.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    p.add_argument("--vocab", type=int, default=258, help="stp's byte tokenizer: 256 + 2 specials")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--d-model", type=int, default=2048)
    p.add_argument("--n-heads", type=int, default=16)
    p.add_argument("--n-layers", type=int, default=16)
    p.add_argument("--mlp-hidden", type=int, default=0, help="0: 4*d_model")
    p.add_argument("--micro-batch-size", type=int, default=2, help="sequences per microbatch")
    p.add_argument("--microbatches", type=int, default=4, help="microbatches per optimizer step")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps, warm-up included")
    p.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    p.add_argument("--precision", default="bf16-master",
                   help="comma list of autocast, bf16-master, fp32 (each with every --attention)")
    p.add_argument("--attention", default="sdpa", help="comma list of sdpa, explicit")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--json-out", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    kinds = [k for k in a.attention.split(",") if k]
    bad = [k for k in kinds if k not in ("sdpa", "explicit")]
    if not kinds or bad:
        p.error(f"--attention={a.attention}: each must be sdpa or explicit")
    a.attention = kinds
    precs = [k for k in a.precision.split(",") if k]
    bad = [k for k in precs if k not in ("autocast", "bf16-master", "fp32")]
    if not precs or bad:
        p.error(f"--precision={a.precision}: each must be autocast, bf16-master or fp32")
    a.precisions = precs
    for name in ("seq_len", "d_model", "n_heads", "n_layers", "micro_batch_size", "microbatches", "steps", "vocab"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(a, name)} must be >= 1")
    if a.d_model % a.n_heads:
        p.error(f"--d-model={a.d_model} must be divisible by --n-heads={a.n_heads}")
    if not 0 <= a.warmup < a.steps:
        p.error(f"--warmup={a.warmup} must be in [0, --steps={a.steps})")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device not in ("cuda", "cpu"):
        p.error(f"--device={a.device} must be cuda, cpu or auto")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device=cuda but torch.cuda.is_available() is False")
    return a


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(a, precision, attention):
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    hidden = a.mlp_hidden or 4 * a.d_model
    with device:  # build and initialise on the device (a 1 B model's CPU init takes seconds)
        model = GPT(a.vocab, a.seq_len, a.d_model, a.n_heads, a.n_layers, hidden, attention)
    if precision == "bf16-master":
        model = model.to(dtype=torch.bfloat16)
        params = [p for p in model.parameters()]
        master = [p.detach().float().clone().requires_grad_(True) for p in params]
    else:
        params = master = [p for p in model.parameters()]
    n_params = sum(p.numel() for p in params)
    decay = [m for p, m in zip(params, master) if p.dim() >= 2]
    no_decay = [m for p, m in zip(params, master) if p.dim() < 2]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if fused else {"foreach": True}))
    gen = torch.Generator(device=device)
    gen.manual_seed(a.seed)
    m, b, t = a.microbatches, a.micro_batch_size, a.seq_len
    use_autocast = precision == "autocast"
    times, losses = [], []
    for step in range(a.steps):
        # Fresh random tokens every step (never time on zeros); drawn before the clock starts.
        data = torch.randint(0, a.vocab, (m, b, t + 1), device=device, generator=gen)
        sync(device)
        t0 = time.perf_counter()
        for p in params:
            p.grad = None
        if master is not params:
            for q in master:
                q.grad = None
        total = torch.zeros((), device=device)
        for i in range(m):
            x, y = data[i, :, :-1], data[i, :, 1:]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                loss = model(x, y) / m
            loss.backward()
            total += loss.detach()
            if master is not params:  # bf16 grads -> fp32 master grads, summed over microbatches
                for p, q in zip(params, master):
                    if q.grad is None:
                        q.grad = p.grad.float()
                    else:
                        q.grad.add_(p.grad)
                    p.grad = None
        torch.nn.utils.clip_grad_norm_(master, 1.0, foreach=True)
        opt.step()
        if master is not params:
            with torch.no_grad():
                torch._foreach_copy_(params, master)
        sync(device)
        dt = time.perf_counter() - t0
        losses.append(float(total))
        if step >= a.warmup:
            times.append(dt)
    tokens = m * b * t
    med = statistics.median(times)
    out = {
        "bench": "torch_baseline", "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "attention": attention, "precision": precision,
        "optimizer": "adamw-fused" if fused else "adamw-foreach",
        "params": n_params, "vocab": a.vocab, "seq_len": t, "d_model": a.d_model,
        "n_heads": a.n_heads, "n_layers": a.n_layers, "mlp_hidden": hidden,
        "micro_batch_size": b, "microbatches": m, "tokens_per_step": tokens,
        "steps": a.steps, "warmup": a.warmup,
        "step_seconds_median": med, "step_seconds_mean": statistics.fmean(times),
        "step_seconds_min": min(times), "step_seconds_max": max(times),
        "tokens_per_s": tokens / med,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    if device.type == "cuda":
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    if not all(math.isfinite(v) for v in losses):
        out["error"] = "non-finite loss"
    return out


def emit(a, record):
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if a.json_out:
        with open(a.json_out, "a") as f:
            f.write(line + "\n")


def main(argv):
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rc = 0
    for precision, attention in [(p, k) for p in a.precisions for k in a.attention]:
        try:
            rec = run_one(a, precision, attention)
            if "error" in rec:
                rc = max(rc, 1)
        except torch.cuda.OutOfMemoryError as e:
            rec = {"bench": "torch_baseline", "attention": attention, "precision": precision,
                   "error": "out of memory", "detail": str(e).splitlines()[0][:300]}
            rc = 3
        emit(a, rec)
        if a.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
