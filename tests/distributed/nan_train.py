"""train.py whose loss turns NaN after NAN_AFTER forward calls: divergence as a user meets it."""

import os
import sys

from spanbert_ds.cli import main
from spanbert_ds.model import objectives

healthy_forward = objectives.SpanBERT.forward
calls = 0


def diverging_forward(self, batch):
    global calls
    out = healthy_forward(self, batch)
    calls += 1
    if calls > int(os.environ["NAN_AFTER"]):
        out = {**out, "loss": out["loss"] * float("nan")}
    return out


objectives.SpanBERT.forward = diverging_forward
sys.exit(main(["train", *sys.argv[1:]]))
