#!/bin/bash
# The GPU checks and figures of docs/benchmarks.md ("GPU"), in one go, on a machine with a CUDA GPU:
#     OUT=gpu_check bash scripts/gpu_check.sh      (the logs and bench.json land in $OUT)
# The GPU tests, experiment=modern's wall time, populations of 100 and 1,000 nielsen members,
# and bench.py's per-epoch table on CUDA. Each step has its own limit, and all end DEADLINE seconds after the
# start (570 by default: one call of a lent machine). EXTRA_PYTHONPATH: packages that machine lacks (Hydra).
# STEPS: which steps to run, of "tests modern populations bench" (all by default); SYSTEMS: bench.py's rows.
set -u
T0=$(date +%s); DEADLINE=${DEADLINE:-570}
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH} PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor MPLBACKEND=Agg
L=$OUT/log.txt; WORK=$(mktemp -d)  # the runs' own folders, fresh each time
STEPS=${STEPS:-tests modern populations bench}
SYSTEMS=${SYSTEMS:-"[mlptrain,'bare eager PyTorch loop',\"mlptrain, Lightning's loop (steps_per_call=1)\",'mlptrain, compile=true']"}
want() { [[ " $STEPS " == *" $1 "* ]]; }
stamp() { echo "== $(date +%T) +$(( $(date +%s) - T0 ))s $*" | tee -a $L; }
left() { local l=$(( DEADLINE - ($(date +%s) - T0) )); (( l < 1 )) && l=1; (( l < $1 )) && echo $l || echo $1; }  # timeout 0 would mean none
timed() { local s=$(date +%s.%N); "$@"; local rc=$?; echo "rc=$rc wall_s=$(python3 -c "print(round($(date +%s.%N)-$s,2))")" | tee -a $L; }

stamp env
{ nvidia-smi -L; nproc; python3 -c "import torch,lightning,torchmetrics,hydra,omegaconf,yaml;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'hydra', hydra.__version__, omegaconf.__version__, 'libyaml', hasattr(yaml,'CSafeLoader'))"; } >>$L 2>&1

want tests && { stamp "tests/test_gpu.py"
timed timeout $(left 200) python3 -m pytest -p no:cacheprovider -p no:hypothesispytest -p no:benchmark -o addopts="" -ra -q -n 8 --dist load tests/test_gpu.py > $OUT/tests.txt 2>&1
tail -12 $OUT/tests.txt >> $L; }

want modern && { stamp "experiment=modern"
timed timeout $(left 75) python3 train.py experiment=modern trainer.accelerator=gpu hydra.run.dir=$WORK/modern > $OUT/modern.txt 2>&1
{ cat $WORK/modern/summary.json; echo; cut -d, -f1-20 $WORK/modern/metrics.csv; } >> $OUT/modern.txt 2>&1; }

want populations && for n in 100 1000; do
  stamp "population of $n"
  timed timeout $(left $(( n == 100 ? 60 : 150 ))) python3 train.py -m hydra/launcher=population experiment=nielsen trainer.max_epochs=2 report.enabled=false "seed=range(1,$((n + 1)))" hydra.sweep.dir=$WORK/p$n > $WORK/p$n.txt 2>&1
  { grep -E "Population of|means over|path|Error|error" $WORK/p$n.txt | head -20; tail -8 $WORK/p$n.txt; } > $OUT/p$n.txt
  grep -E "means over" $WORK/p$n.txt >> $L
done

want bench && { stamp "bench.py device=cuda"
timed timeout $(left 600) python3 scripts/bench.py device=cuda rounds=2 epochs=2 "systems=$SYSTEMS" out=$OUT/bench.json > $OUT/bench.txt 2>&1
tail -20 $OUT/bench.txt >> $L; }
stamp done
