"""Confounded MNIST: a network taught, with camkit's differentiable maps, to ignore a shortcut."""
