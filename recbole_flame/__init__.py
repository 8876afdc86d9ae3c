"""recbole_flame: FLAME, CANet, TiM4Rec and CETNet as RecBole models."""

__version__ = "0.1.0"
