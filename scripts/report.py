"""Gather a sweep's runs into one table and one plot:

    python train.py -m model.activation=sigmoid,tanh,relu seed=1,2,3
    python scripts/report.py outputs/multirun/<date>/<time>

Writes sweep_report.md (mean ± std over seeds of test accuracy, best validation accuracy and wall time,
for each setting the sweep varied), sweep_jobs.csv (one row per job) and val_acc.png into that folder.
"""

from mlptrain.commands import report
from mlptrain.errors import run_script

if __name__ == "__main__":
    run_script(report)
