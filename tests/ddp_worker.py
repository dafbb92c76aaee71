"""Run under torchrun by test_finetune.py: one fine-tuning run, each rank reports its weights."""

import json
import os
import sys

from zoo.training import finetune

data, out = sys.argv[1], sys.argv[2]
result = finetune("efficientnet_lite0", data, out, epochs=1, batch_size=4, lr=1e-3, quiet=True, seed=3,
                  after_probe="finetune")  # the images are separable: the recipe would stop at the probe
report = json.dumps({"rank": int(os.environ["RANK"]), "sha": result.last_weights_sha256, "metrics": result.best_metrics,
                     "epochs": [row["epoch"] for row in result.history]})
# One write(2) of the whole line: both ranks share the pipe, and print() may write text and newline
# separately, which interleaved the two reports on one line.
os.write(1, (report + "\n").encode())
