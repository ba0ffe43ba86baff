"""Gather a sweep's runs into one table and one plot:

    python train.py -m model.activation=sigmoid,tanh,relu seed=1,2,3
    python scripts/report.py outputs/multirun/<date>/<time>

Writes sweep_report.md (mean ± std over seeds of test accuracy, best validation accuracy and wall time,
for each setting the sweep varied), sweep_jobs.csv (one row per job) and val_acc.png into that folder.
"""

import sys
from pathlib import Path

from mlptrain.errors import MlptrainError
from mlptrain.sweep_report import summarize

if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python scripts/report.py outputs/multirun/<date>/<time>", file=sys.stderr)
        sys.exit(2)
    sweep_dir = Path(sys.argv[1])
    try:
        summarize(sweep_dir)
    except MlptrainError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print((sweep_dir / "sweep_report.md").read_text())
