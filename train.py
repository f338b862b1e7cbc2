"""`deepspeed train.py --deepspeed_config ds_configs/X.json --data SHARDS ...` (also torchrun, srun, mpirun, python)."""

import os
import sys

from spanbert_ds.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog=os.path.basename(sys.argv[0])))
