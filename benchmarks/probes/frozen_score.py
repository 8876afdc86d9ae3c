"""Score a FLAME spec's frozen SASRec alone, before any training: does our pipeline give the
authors' released weights what their own evaluator gives them?

    FLAME_DATA=DIR FLAME_WEIGHTS=DIR python benchmarks/probes/frozen_score.py \
        benchmarks/experiments/flame_toys_authors_prefix.yaml --seed 42 --label FLAME

Builds the run's config, data, model and trainer as the run would (``prepare``), loads
``frozen_checkpoint`` exactly as stage 2 does, and evaluates valid and test with the frozen network
scoring. Writes ``benchmarks/results/<spec>/frozen_score-seed<k>.json`` with command, commit and
machine.
"""

from __future__ import annotations

import time

from recbole_flame.experiment.output import provenance, write_json
from recbole_flame.experiment.probes import prepare_run, probe_parser, probe_setup


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--label", default="FLAME")
    start = time.perf_counter()
    args, spec, out_dir = probe_setup(parser)
    config, model, trainer, (_, valid_data, test_data) = prepare_run(
        spec, args.label, args.seed, out_dir
    )
    trainer.load_frozen(config["frozen_checkpoint"], test_data._dataset)
    with model.scoring_with("frozen"):
        valid = dict(trainer.evaluate(valid_data, load_best_model=False))
        test = dict(trainer.evaluate(test_data, load_best_model=False))
    record = {
        **provenance(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "spec": args.spec,
        "label": args.label,
        "frozen_checkpoint": config["frozen_checkpoint"],
        "valid_result": valid,
        "test_result": test,
    }
    path = out_dir / f"frozen_score-seed{args.seed}.json"
    write_json(path, record)
    print(f"valid {valid}\ntest {test}\nwritten: {path}")


if __name__ == "__main__":
    main()
