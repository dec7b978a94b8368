"""rlsd: RLVR with Self-Distillation (arXiv 2604.03128) on Hugging Face TRL."""

__version__ = "0.1.0"
