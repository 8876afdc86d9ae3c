"""Experiments as part of the package: a yaml spec per experiment (``benchmarks/experiments/``),
each (run, seed) trained to early stopping and resumable across sittings, and the tables and
tests that summarise them.

``python run_recbole_flame.py --spec=benchmarks/experiments/X.yaml [--summary | --progress |
--park]`` runs it (:func:`recbole_flame.experiment.runs.run_experiment`). Modules:

- :mod:`~recbole_flame.experiment.spec`: loading a spec, where its results live, each run's config;
- :mod:`~recbole_flame.experiment.runs`: training the runs, parking and unparking unfinished ones,
  progress reports;
- :mod:`~recbole_flame.experiment.summary`: the summary table and paired tests;
- :mod:`~recbole_flame.experiment.stats`: mean ± sd and paired t-tests (shared with
  :mod:`recbole_flame.experiment.compare`);
- :mod:`~recbole_flame.experiment.per_user`: per-user ranks of a test split and paired tests over
  users (the comparison and the probes);
- :mod:`~recbole_flame.experiment.probes`: what the scripts under ``benchmarks/probes/`` read a
  finished run with;
- :mod:`~recbole_flame.experiment.output`: Markdown tables, JSON records and their provenance.

What only this repository runs lives beside the benchmarks, not here: ``benchmarks/report.py``
(docs/results.md, plots and generated tables) and ``benchmarks/micro/common.py`` (a training
step and its FLOP count, for the micro-benchmarks; each micro-benchmark renders its own table).

Paths are relative to the current working directory: results go to
``benchmarks/results/<spec name>/`` under it (or ``--out``), so run from the repository root
to read and extend the committed results.
"""
