"""What PyTorch's deterministic mode costs in filling every new tensor, and whether skipping the
fill changes a training run.

  python benchmarks/uninitialized_fill.py [--loss proposed_plus] [--fold 1] [--epochs 1]
                                          [--rounds 2]

With `torch.use_deterministic_algorithms(True)` PyTorch also fills the memory of every tensor
it allocates uninitialised (torch.empty and all that uses it) with NaN, so that a kernel reading
memory it never wrote would at least read the same value every run
(`torch.utils.deterministic.fill_uninitialized_memory`, on by default). `silr train` turns the
mode on for the CPU. This script builds the run as `silr train --loss L --fold K` does, and from
the same initial weights, optimiser state and augmentation generator trains `--epochs` epochs
with the fill on and with it off, `--rounds` times in alternation (one process, so the ratio is
measured on one machine state). It prints the times and whether the trained weights and the
optimiser state are bit-identical. Nothing is written.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import torch
import torch.utils.deterministic

from silr.core.params import load_params
from silr.stages import train as train_stage
from silr.training.loop import build_optimizer, deterministic, train_epoch


def train_from(setup, start_model, start_optimizer, start_generator, epochs: int, fill: bool):
    setup.model.load_state_dict(start_model)
    optimizer = build_optimizer(setup.model, setup.params)
    optimizer.load_state_dict(copy.deepcopy(start_optimizer))
    generator = torch.Generator(device=setup.train_frames.device)
    generator.set_state(start_generator)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    start = time.perf_counter()
    with deterministic(setup.runtime):
        for _ in range(epochs):
            train_epoch(setup.model, setup.loss_fn, optimizer, setup.train_frames, setup.params,
                        generator, setup.runtime)
    seconds = time.perf_counter() - start
    weights = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
    return seconds, weights, optimizer.state_dict()


def same_optimizer_state(a: dict, b: dict) -> bool:
    for key, state in a["state"].items():
        other = b["state"][key]
        if any(not torch.equal(state[name], other[name]) for name in state):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default="proposed_plus")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params("params.yaml")
    with tempfile.TemporaryDirectory() as scratch:
        setup = train_stage.prepare(
            params, loss_name=args.loss, fold=args.fold, data_path=params.data.processed,
            folds_path="data/folds.json", out_dir=os.path.join(scratch, "m"),
            live_dir=os.path.join(scratch, "l"), resume_dir=os.path.join(scratch, "r"))
    start_model = copy.deepcopy(setup.model.state_dict())
    start_optimizer = build_optimizer(setup.model, setup.params).state_dict()
    start_generator = torch.Generator(device=setup.train_frames.device).manual_seed(0).get_state()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.loss} fold {args.fold}, "
          f"{len(setup.train_frames)} training frames, {args.epochs} epoch(s) a run")
    times = {True: [], False: []}
    results = {}
    for round_ in range(args.rounds):
        for fill in (True, False):
            seconds, weights, optimizer_state = train_from(
                setup, start_model, start_optimizer, start_generator, args.epochs, fill)
            times[fill].append(seconds)
            results.setdefault(fill, (weights, optimizer_state))
            print(f"round {round_ + 1}, fill {'on ' if fill else 'off'}: {seconds:.2f} s")
    on, off = sum(times[True]), sum(times[False])
    weights_same = all(torch.equal(results[True][0][k], results[False][0][k])
                       for k in results[True][0])
    print(f"fill on / fill off: {on:.2f} / {off:.2f} s = {on / off:.3f}x")
    print(f"trained weights bit-identical: {weights_same}; optimiser state bit-identical: "
          f"{same_optimizer_state(results[True][1], results[False][1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
