"""DeepHoyer (Yang, Wen, Li, ICLR 2020): sparsity regularisers (`regularizers`) and the method (`method`)."""

from prunekit.methods.deephoyer import regularizers
from prunekit.methods.deephoyer.method import DeepHoyer, DeepHoyerOptions

__all__ = ["DeepHoyer", "DeepHoyerOptions", "regularizers"]
