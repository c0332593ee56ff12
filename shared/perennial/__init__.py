"""Perennial: models that keep learning from a stream while they serve.

The core library shared by the trainer and inference services: the frozen
backbone, PET modules, the LAE learner, the stream codec, the Redis snapshot
store and metrics. Nothing here does work at import time.
"""

__version__ = "0.1.0"
