"""wasap: truly sparse neural networks on CPUs (SET, All-ReLU, Importance Pruning, WASAP-SGD)."""

__version__ = "0.1.0"
