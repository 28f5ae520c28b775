"""The volumes-and-video worked example: MNIST digits in small volumes and moving clips."""
