"""rlsd: RLVR with Self-Distillation (arXiv 2604.03128) on Hugging Face TRL.

`RLSDConfig` and `RLSDTrainer` are imported lazily so that light modules (`rlsd.objectives`,
`rlsd.verifiers`, their sandbox workers) do not pay for importing TRL.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["RLSDConfig", "RLSDTrainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "RLSDConfig":
        from rlsd.config import RLSDConfig

        return RLSDConfig
    if name == "RLSDTrainer":
        from rlsd.trainer import RLSDTrainer

        return RLSDTrainer
    raise AttributeError(f"module 'rlsd' has no attribute {name!r}")
