"""Ray Tune search over RecBole hyper files, and side-by-side model comparison."""

from recbole_flame.tuning.hyper import HyperFileError, HyperParam, parse_hyper_file, search_space

__all__ = ["HyperFileError", "HyperParam", "parse_hyper_file", "search_space"]
