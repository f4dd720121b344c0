"""The anchor run of issue 11 §3: nanoGPT's char-level tinyshakespeare CPU configuration in
PyTorch float32, written out here so the device machine (no network) can run it next to
`leam train --preset nanogpt-cpu` in the same sitting.

Configuration (nanoGPT config/train_shakespeare_char.py with its README's CPU overrides):
4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, dropout 0, no bias,
AdamW lr 1e-3 (warm-up 100, cosine to 1e-4 at 2000), betas (0.9, 0.99), weight decay 0.1 on
matrices only, gradient clipping 1.0, eval every 250 on 20 batches per split, seed 1337,
train/val = first 90% / last 10% of the characters.

Usage: python3 bench/nanogpt_torch.py [--data data/tinyshakespeare.txt] [--device cpu|cuda]
[--threads N]. Prints the val loss at each eval and, last, `wall_s <s> peak_rss_mib <MiB>`.
"""
import argparse, math, resource, time
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--data", default="data/tinyshakespeare.txt")
p.add_argument("--device", default="cpu")
p.add_argument("--threads", type=int, default=0)
p.add_argument("--iters", type=int, default=2000)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(1337)

L, H, C, T, B = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, DECAY, EVAL_EVERY, EVAL_ITERS = 1e-3, 1e-4, 100, 2000, 250, 20

text = open(a.data, encoding="utf-8").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
cut = int(0.9 * len(ids))
splits = {"train": ids[:cut], "val": ids[cut:]}
V = len(chars)


def batch(split):
    d = splits[split]
    ix = torch.randint(len(d) - T, (B,))
    x = torch.stack([d[i : i + T] for i in ix])
    y = torch.stack([d[i + 1 : i + 1 + T] for i in ix])
    return x.to(a.device), y.to(a.device)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(C, bias=False)
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C, bias=False)
        self.ln2 = nn.LayerNorm(C, bias=False)
        self.up = nn.Linear(C, 4 * C, bias=False)
        self.down = nn.Linear(4 * C, C, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, C))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, C)
        self.pos = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.lnf = nn.LayerNorm(C, bias=False)
        self.head = nn.Linear(C, V, bias=False)
        self.tok.weight = self.head.weight  # tied, as nanoGPT
        for n, w in self.named_parameters():
            if w.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if n.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(w, 0.0, std)

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.lnf(x))
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))


model = GPT().to(a.device)
decay = [w for w in model.parameters() if w.dim() >= 2]
no_decay = [w for w in model.parameters() if w.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LR, betas=(0.9, 0.99),
)


def lr_at(it):
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    r = (it - WARMUP) / (DECAY - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * min(r, 1.0))) * (LR - MIN_LR)


@torch.no_grad()
def evaluate():
    model.eval()
    out = {s: torch.stack([model(*batch(s)) for _ in range(EVAL_ITERS)]).mean().item() for s in splits}
    model.train()
    return out


t0 = time.time()
for it in range(a.iters + 1):
    if it % EVAL_EVERY == 0 or it == a.iters:
        e = evaluate()
        print(f"step {it}: train {e['train']:.4f} val {e['val']:.4f} ({time.time() - t0:.1f} s)", flush=True)
    if it == a.iters:
        break
    for g in opt.param_groups:
        g["lr"] = lr_at(it)
    loss = model(*batch("train"))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
if a.device == "cuda":
    torch.cuda.synchronize()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"wall_s {time.time() - t0:.1f} peak_rss_mib {rss:.0f} threads {torch.get_num_threads()}")
