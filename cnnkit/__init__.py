"""cnnkit: train, evaluate and understand convolutional networks on CIFAR-10."""

import time

__version__ = "0.1.0"

# When this process imported cnnkit: for the command line, its launch (within Python's start-up),
# where a run's launch-to-report clock starts (cnnkit.training.fit).
IMPORTED_AT = time.time()
