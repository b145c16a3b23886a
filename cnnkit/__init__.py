"""cnnkit: train, evaluate and understand convolutional networks on CIFAR-10."""

__version__ = "0.1.0"
