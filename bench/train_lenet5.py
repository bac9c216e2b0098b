"""One training epoch of LeNet-5 on the digits: fastconv against PyTorch.

    python bench/train_lenet5.py [threads] [rounds]

Same architecture, batch size (32), optimizer (Adam, 3e-3), data and thread
count; epochs of the two alternate (5 rounds by default), and the best epoch of
each gives the ratio torch / fastconv.
"""

import sys
import time

import numpy as np

import fastconv as fc
from fastconv import nn
from fastconv.models import lenet5
from fastconv.train import batches, load_digits_32


def fastconv_epoch(x, y, rng):
    model, loss_fn = lenet5(), nn.CrossEntropyLoss()
    opt = nn.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for idx in batches(len(x), 32, rng):
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx])
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return time.perf_counter() - start


def torch_epoch(torch, x, y, rng):
    T = torch.nn
    model = T.Sequential(T.Conv2d(1, 6, 5), T.ReLU(), T.MaxPool2d(2), T.Conv2d(6, 16, 5),
                         T.ReLU(), T.MaxPool2d(2), T.Flatten(), T.Linear(400, 120), T.ReLU(),
                         T.Linear(120, 84), T.ReLU(), T.Linear(84, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = T.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    for idx in batches(len(x), 32, rng):
        index = torch.from_numpy(idx)
        opt.zero_grad()
        loss_fn(model(xt[index]), yt[index]).backward()
        opt.step()
    return time.perf_counter() - start


def main(threads=2, rounds=5):
    import torch

    threads, rounds = int(threads), int(rounds)
    fc.set_num_threads(threads)
    torch.set_num_threads(threads)
    x, y, _, _ = load_digits_32()
    y = y.astype(np.int64)
    ours, theirs = [], []
    for i in range(rounds):         # interleaved, so that both meet the same host load
        ours.append(fastconv_epoch(x, y, np.random.default_rng(i)))
        theirs.append(torch_epoch(torch, x, y, np.random.default_rng(i)))
    print(f"one epoch, {len(x)} images, batch 32, {threads} threads, best of {rounds} "
          f"interleaved rounds: fastconv {min(ours):.3f} s, torch {min(theirs):.3f} s, "
          f"ratio torch/fastconv {min(theirs) / min(ours):.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
