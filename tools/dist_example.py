"""Train a small MLP sharded with FSDP2 on CPU, with a generated optimizer, and checkpoint it.

    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29511 \\
        tools/dist_example.py --rule lamb --steps 20

Each rank holds half of every weight's rows (``fully_shard``); the optimizer updates its shard
in place and keeps its state as DTensors placed like the weights; LAMB's norms are combined
across the shards, so the run matches one-process training. Halfway through, the optimizer
state goes through ``torch.distributed.checkpoint`` (saved to a directory and loaded into a new
optimizer, as a restarted job would); rank 0 prints the loss. (``--backend nccl`` on GPUs.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generated.torch import RULES
from tools.cli import positive_int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="lamb", choices=sorted(RULES), help="rule to train with")
    parser.add_argument("--steps", type=positive_int, default=20, help="training steps")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate")
    parser.add_argument("--backend", default="gloo", help="torch.distributed backend (gloo, nccl)")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error(
            "run it under torchrun, one process per rank: torchrun --nproc-per-node 2 "
            "tools/dist_example.py (README: Distributed training)"
        )
    dist.init_process_group(args.backend, timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    for layer in (net[0], net[2]):
        fully_shard(layer)
    fully_shard(net)
    make = RULES[args.rule]
    opt = make(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1 + rank)  # each rank its own batches
    x = torch.randn(64, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True).sin()
    with tempfile.TemporaryDirectory() as scratch:
        where = [scratch]
        dist.broadcast_object_list(where)  # rank 0's directory (one machine)
        for step in range(1, args.steps + 1):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            if step == args.steps // 2:  # a restart: the optimizer state through a checkpoint
                dcp.save({"optim": get_optimizer_state_dict(net, opt)}, checkpoint_id=where[0])
                net.zero_grad(set_to_none=True)
                opt = make(net.parameters(), lr=args.lr)
                opt.init_state()  # FTRL, FTML, MADGRAD and AdaHessian need it; harmless else
                loaded = {"optim": get_optimizer_state_dict(net, opt)}
                dcp.load(loaded, checkpoint_id=where[0])
                set_optimizer_state_dict(net, opt, loaded["optim"])
            if rank == 0 and (step == 1 or step % 5 == 0):
                print(f"step {step:3d}  loss {loss.item():.5f}", flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
