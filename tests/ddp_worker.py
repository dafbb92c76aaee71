"""Run under torchrun by test_finetune.py: one fine-tuning run, each rank reports its weights."""

import json
import os
import sys

import torch.distributed as dist

from zoo.training import finetune

data, out = sys.argv[1], sys.argv[2]
# device cpu: two gloo processes, also on a machine with one GPU (each rank would want a GPU of its own).
# gradual:1 over 2 epochs: the head alone, then the top block too (DDP must be rebuilt to sync its gradients).
result = finetune("efficientnet_lite0", data, out, epochs=2, batch_size=4, lr=1e-3, quiet=True, seed=3, device="cpu",
                  freeze="gradual:1", after_probe="finetune")  # the images are separable: the recipe would stop at the probe
report = json.dumps({"rank": int(os.environ["RANK"]), "sha": result.last_weights_sha256, "metrics": result.best_metrics,
                     "epochs": [row["epoch"] for row in result.history],
                     "group_destroyed": not dist.is_initialized()})  # finetune() started it, so it ends it
# One write(2) of the whole line: both ranks share the pipe, and print() may write text and newline
# separately, which interleaved the two reports on one line.
os.write(1, (report + "\n").encode())
