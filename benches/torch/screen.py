"""The screen stage in PyTorch: the same task data (written by mad-search in
the reference layout), the same models (models.py), the same training loop
as src/train/run.rs, the same concurrency. Run by `cargo bench --bench torch
-- --screen`; prints one JSON line.

Per task setting: AdamW (betas and epsilon of the preset, weight decay on
all parameters), learning rate stepped per epoch on a cosine from `lr` to
`min_lr` over the setting's epochs, batches reshuffled every epoch, masked
cross-entropy (targets -100 unscored), embedding N(0, embedding_std),
validation accuracy (micro and macro, as src/train/metrics.rs) after every
epoch (the test split doubles as validation split, as in the reference),
early stop when the validation accuracy of the preset's `metric` (macro
unless it says micro) reaches `early_stop`, a plateau stop after `patience`
epochs without a better one, test accuracy of the best epoch's weights. Every setting carries its own epochs, step cap and
patience (a preset's per-task budgets). Compression uses the autoencoder head
of src/layers/model.rs. Settings run `--parallel` at a time, each in a
process with one thread (mad-search: one single-threaded pool per run).
Every run reports its learning curve: validation accuracy after each epoch.
"""

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import time

import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def worker_init(threads):
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def sinusoidal(seq, d):
    import torch

    p = torch.arange(seq, dtype=torch.float64)[:, None]
    j = torch.arange(d)
    freq = 10000.0 ** (-(j - j % 2).double() / d)
    a = p * freq
    return torch.where(j % 2 == 0, a.sin(), a.cos()).float()[None]


def build(names, d, seq, vocab, autoencoder, embedding_std):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from models import Model, RMSNorm

    class AutoEncoder(nn.Module):
        """The LM's layers, then the last position broadcast over the
        sequence plus a sinusoidal position code, two GELU layers, norm, head."""

        def __init__(self):
            super().__init__()
            self.lm = Model(names, d, seq, vocab, embedding_std)
            self.norm1, self.l1 = RMSNorm(d), nn.Linear(d, d)
            self.norm2, self.l2 = RMSNorm(d), nn.Linear(d, d)
            for lin in (self.l1, self.l2, self.lm.head):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            self.register_buffer("pe", sinusoidal(seq, d))

        def forward(self, tokens):
            h = self.lm.layers(self.lm.embedding(tokens))
            x = h[:, -1:, :] + self.pe[:, : h.shape[1]]
            x = F.gelu(self.l1(self.norm1(x)))
            x = F.gelu(self.l2(self.norm2(x)))
            return self.lm.head(self.lm.norm(x))

    return AutoEncoder() if autoencoder else Model(names, d, seq, vocab, embedding_std)


def accuracy(model, inputs, targets, batch, vocab):
    """(micro, macro): hits over scored positions, and per-class recall
    averaged over the classes seen in the targets or the predictions."""
    import torch

    hits = torch.zeros(vocab, dtype=torch.int64)
    support = torch.zeros(vocab, dtype=torch.int64)
    predicted = torch.zeros(vocab, dtype=torch.int64)
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            pred = model(inputs[i : i + batch]).argmax(-1)
            t = targets[i : i + batch]
            mask = t >= 0
            p, t = pred[mask], t[mask]
            support += torch.bincount(t, minlength=vocab)
            predicted += torch.bincount(p, minlength=vocab)
            hits += torch.bincount(t[p == t], minlength=vocab)
    scored = support.sum().item()
    micro = hits.sum().item() / max(scored, 1)
    seen = (support > 0) | (predicted > 0)
    recall = hits.double() / support.clamp(min=1).double()
    macro = recall[seen].sum().item() / max(seen.sum().item(), 1)
    return micro, macro


def run_setting(job):
    import torch
    import torch.nn.functional as F

    s, a = job["setting"], job["args"]
    torch.manual_seed(a["seed"])
    load = lambda split, name: torch.from_numpy(
        np.load(os.path.join(a["data"], s["dir"], split, name + ".npy")).astype(np.int64)
    )
    x, y = load("train", "inputs"), load("train", "targets")
    tx, ty = load("test", "inputs"), load("test", "targets")
    x, y = x[: s["num_train"]], y[: s["num_train"]]
    tx, ty = tx[: s["num_test"]], ty[: s["num_test"]]
    names = a["layers"].split()
    model = build(
        names, a["width"], s["model_len"], s["vocab"], s["task"] == "compression",
        a["embedding_std"],
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=a["lr"], betas=tuple(a["betas"]), eps=a["epsilon"],
        weight_decay=a["weight_decay"],
    )
    epochs_max, max_steps, patience = s["epochs"], s["max_steps"], s["patience"]
    t0 = time.perf_counter()
    metric = a.get("metric", "macro")
    if metric not in ("macro", "micro"):
        raise ValueError(f"unknown metric {metric!r}; expected macro or micro")
    best, best_acc, best_epoch, steps, epochs, curve = None, -1.0, 0, 0, 0, []
    outcome = "budget"
    g = torch.Generator().manual_seed(a["seed"])
    for epoch in range(epochs_max):
        lr = a["min_lr"] + (a["lr"] - a["min_lr"]) * 0.5 * (1 + math.cos(math.pi * epoch / epochs_max))
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(len(x), generator=g)
        loss_sum, batches = 0.0, 0
        for i in range(0, len(x), a["batch"]):
            idx = order[i : i + a["batch"]]
            logits = model(x[idx])
            loss = F.cross_entropy(logits.reshape(-1, s["vocab"]), y[idx].reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            batches += 1
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        epochs += 1
        model.eval()
        micro, macro = accuracy(model, tx, ty, a["batch"], s["vocab"])
        curve.append({"epoch": epochs, "steps": steps, "loss": loss_sum / max(batches, 1),
                      "micro": micro, "macro": macro})
        acc = micro if metric == "micro" else macro
        if acc > best_acc:
            best_acc, best_epoch, best = acc, epochs, copy.deepcopy(model.state_dict())
        if acc >= a["early_stop"]:
            outcome = "early-stopped"
            break
        if patience is not None and epochs - best_epoch >= patience:
            outcome = "plateaued"
            break
        if max_steps is not None and steps >= max_steps:
            break
    model.load_state_dict(best)
    micro, macro = accuracy(model, tx, ty, a["batch"], s["vocab"])
    return {
        "task": s["task"], "dir": s["dir"], "steps": steps, "epochs": epochs, "test": micro,
        "test_macro": macro, "outcome": outcome, "curve": curve,
        "seconds": time.perf_counter() - t0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", required=True, help="JSON file: settings and hyper-parameters")
    a = p.parse_args()
    with open(a.job) as f:
        job = json.load(f)
    args = job["args"]
    ctx = mp.get_context("spawn")
    with ctx.Pool(args["parallel"], initializer=worker_init, initargs=(1,)) as pool:
        # Workers import torch before the clock starts.
        pool.map(worker_init, [1] * args["parallel"])
        t0 = time.perf_counter()
        runs = pool.map(run_setting, [{"setting": s, "args": args} for s in job["settings"]], chunksize=1)
        wall = time.perf_counter() - t0
    import torch

    print(json.dumps({"wall": wall, "runs": runs, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
