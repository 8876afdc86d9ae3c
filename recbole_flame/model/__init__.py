"""This package's models; look them up with ``recbole_flame.utils.get_model``."""
