"""Experiments, not single runs: sweeps over settings × seeds and Optuna searches, on one engine.

grid.py parses `--grid`/`--seeds` into cells; space.py parses a search space; study.py keeps the
Optuna study (storage, the planned trials, claiming and requeueing them); workers.py runs trials in
worker processes as ordinary cnnkit runs; sweep.py and tune.py plan and report the two kinds;
aggregate.py is the statistics (mean, std, Student-t 95% interval); plot.py draws a sweep.
Optuna is an optional extra (`pip install 'cnnkit[experiments]'`), imported only here.
"""
