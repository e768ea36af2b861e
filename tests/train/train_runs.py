"""Several ``train.py`` runs one after another in one process, under one ``torchrun`` launch
(tests/train/test_distributed.py): each rank imports torch and DeepSpeed and joins the process group
once for all of them instead of once per launch, since starting an agent and two ranks costs more CPU
than a micro run's training. From the repository root:

    torchrun --standalone --nproc_per_node=2 -m tests.train.train_runs '["--config", "tiny", ...]' ...

Each argument is one run's ``train.py`` argv as a JSON list; a run that fails ends the launch.
"""
import json
import sys

import train

if __name__ == "__main__":
    for argv in sys.argv[1:]:
        train.main(json.loads(argv))
