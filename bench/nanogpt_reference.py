"""The PyTorch reference, timed on this machine in the same sitting as keraslm's own figures.

  pip install torch==2.13.0 numpy   # in any venv; keraslm itself does not need PyTorch
  python bench/nanogpt_reference.py [--max_iters=2000] [--no_write]

The speed target of issue 5 is relative to nanoGPT on the same machine, and the shared
machines here change from session to session (an AMD EPYC one day, an Intel Xeon the next, with
2x different speed). This script re-implements nanoGPT's model and training loop (karpathy/nanoGPT
model.py + train.py, as of 2023) with its README's CPU command for shakespeare_char:

  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
    --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
    --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

so that ms/iteration, wall time and validation loss can be compared with `bench/train.py` run
minutes apart. Written here rather than fetched: no network at run time. What is the same as
nanoGPT: pre-norm GPT blocks with bias-free Linear/LayerNorm, tied input/output embedding,
`scaled_dot_product_attention(is_causal=True)`, exact GELU, AdamW (betas 0.9/0.99, weight decay
0.1 on 2-D weights only, not fused on CPU), warmup 100 + cosine to 1e-4, clip 1.0, random
windows from the first 90% of the characters, train and validation losses estimated on 20 random
batches each at iteration 0 and every 250. Not done here: nanoGPT also writes ckpt.pt whenever
the validation loss improves (a few hundred KB at this size), and runs one more iteration after
its last estimate. It reads data/tinyshakespeare/input.txt.

PyTorch's CPU build: `pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`
on a machine where PyPI's default would be the CUDA one.
"""

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/common.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_gpt(torch, vocab_size, block_size, n_layer, n_head, n_embd):
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
            self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(n_embd, dim=2)
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
            self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)  # named so it gets the scaled init

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd, bias=False)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(n_embd, bias=False)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab_size, n_embd)
            self.wpe = nn.Embedding(block_size, n_embd)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd, bias=False)
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return GPT()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_iters", type=int, default=2000, help="Training iterations (nanoGPT's max_iters).")
    parser.add_argument("--lr_decay_iters", type=int, default=2000, help="End of the cosine decay (nanoGPT's lr_decay_iters).")
    parser.add_argument("--eval_interval", type=int, default=250, help="Estimate the losses every this many iterations.")
    parser.add_argument("--eval_iters", type=int, default=20, help="Random batches per split per estimate.")
    parser.add_argument("--target_loss", type=float, default=1.89, help="Report the time to reach this validation loss.")
    parser.add_argument("--no_write", action="store_true", help="Print the row; do not append it to BENCHMARKS.md.")
    args = parser.parse_args()
    if args.max_iters < 1 or args.eval_interval < 1 or args.eval_iters < 1:
        parser.error("--max_iters, --eval_interval and --eval_iters must be at least 1")
    try:
        import torch
    except ImportError:
        sys.exit("bench/nanogpt_reference.py needs PyTorch: pip install torch==2.13.0 numpy")
    torch.manual_seed(1337)
    batch_size, block_size, n_layer, n_head, n_embd = 12, 64, 4, 4, 128
    learning_rate, min_lr, warmup_iters = 1e-3, 1e-4, 100

    with open(os.path.join(ROOT, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as file:
        text = file.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]

    def get_batch(source):
        starts = torch.randint(len(source) - block_size, (batch_size,)).numpy()
        x = torch.from_numpy(np.stack([source[i : i + block_size] for i in starts]))
        y = torch.from_numpy(np.stack([source[i + 1 : i + 1 + block_size] for i in starts]))
        return x, y

    model = build_gpt(torch, len(chars), block_size, n_layer, n_head, n_embd)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(0.9, 0.99),
    )

    def lr_at(it):  # nanoGPT's get_lr
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > args.lr_decay_iters:
            return min_lr
        ratio = (it - warmup_iters) / (args.lr_decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    @torch.no_grad()
    def estimate_loss():  # nanoGPT's: both splits, eval_iters random batches each
        model.eval()
        losses = {
            name: float(np.mean([model(*get_batch(source)).item() for _ in range(args.eval_iters)]))
            for name, source in (("train", train_ids), ("val", val_ids))
        }
        model.train()
        return losses

    def torch_matmul_gflops(size=2048, repeats=10):
        a, b = torch.randn(size, size), torch.randn(size, size)
        return common.square_matmul_gflops(lambda: a @ b, size, repeats)

    peak, numpy_peak = torch_matmul_gflops(), common.numpy_matmul_gflops()
    # (iteration, val loss, seconds since the start, ms/iteration since the previous estimate)
    evaluations, train_seconds, last_evaluated = [], 0.0, 0
    started = segment_started = time.perf_counter()
    for it in range(args.max_iters + 1):
        # nanoGPT estimates at iteration 0 too; the last iteration always gets one here.
        if it % args.eval_interval == 0 or it == args.max_iters:
            segment = time.perf_counter() - segment_started
            losses = estimate_loss()
            if it > 0:
                train_seconds += segment
                evaluations.append((it, losses["val"], time.perf_counter() - started, 1000 * segment / (it - last_evaluated)))
                print(f"iter {it}: train {losses['train']:.4f}, val {losses['val']:.4f}, {evaluations[-1][3]:.1f} ms/iter", flush=True)
            last_evaluated = it
            segment_started = time.perf_counter()
        if it == args.max_iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        loss = model(*get_batch(train_ids))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT logs every iteration with --log_interval=1
    wall = time.perf_counter() - started
    peak, numpy_peak = max(peak, torch_matmul_gflops()), max(numpy_peak, common.numpy_matmul_gflops())

    steady_ms = statistics.median(e[3] for e in evaluations[1:]) if len(evaluations) > 1 else evaluations[0][3]
    reached = next((e for e in evaluations if e[1] <= args.target_loss), None)
    # bench/train.py's count (nanoGPT's): 6 * matmul weights + 12 * layers * width * context. The
    # tied embedding counts once, as the output projection; the position table is no matmul.
    matmul_weights = n_layer * (4 * n_embd * n_embd + 2 * n_embd * 4 * n_embd) + n_embd * len(chars)
    flops_per_token = 6 * matmul_weights + 12 * n_layer * n_embd * block_size
    achieved = flops_per_token * batch_size * block_size / (steady_ms / 1000) / 1e9
    body = (
        f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; {n_layer}x{n_embd}, {n_head} heads, "
        f"context {block_size}, batch {batch_size}, "
        f"{args.max_iters} iterations.\n\n"
        "| val loss at end (20 batches) | wall incl. evaluations | training only | ms/iter median | "
        f"model GFLOP/token | achieved GFLOP/s | matmul 2048² GFLOP/s (torch / numpy) | MFU (torch / numpy peak) | "
        f"time to val <= {args.target_loss} |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {evaluations[-1][1]:.4f} | {wall:.1f} s | {train_seconds:.1f} s | {steady_ms:.1f} | {flops_per_token / 1e9:.4f} | "
        f"{achieved:.0f} | {peak:.0f} / {numpy_peak:.0f} | {achieved / peak:.0%} / {achieved / numpy_peak:.0%} | "
        + (f"{reached[2]:.1f} s (iter {reached[0]})" if reached else "not reached")
        + " |\n\nSegments (ms/iter): "
        + ", ".join(f"{e[3]:.1f}" for e in evaluations)
    )
    common.report("Reference: nanoGPT's model and loop in PyTorch (bench/nanogpt_reference.py)", body, args.no_write)


if __name__ == "__main__":
    main()
