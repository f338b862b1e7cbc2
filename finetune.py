"""`deepspeed finetune.py --deepspeed_config ds_configs/X.json --task squad|classify|ner --init RUN_OR_HF_DIR
--train FILE --eval FILE --output DIR` (also torchrun, srun, mpirun, python)."""

import os
import sys

from spanbert_ds.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]], prog=os.path.basename(sys.argv[0])))
