"""The MNIST worked example: a 4,010-parameter ConvNet explained with camkit."""
