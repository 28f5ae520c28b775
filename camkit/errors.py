"""The exceptions camkit raises.

Every error camkit raises on purpose is a :class:`CamkitError`. Bad values are
also :class:`ValueError`, bad types also :class:`TypeError`, so callers may
catch either the camkit family or the builtin they already expect.
"""

from __future__ import annotations

__all__ = [
    "CamkitError",
    "CamkitModelError",
    "CamkitStorageError",
    "CamkitTypeError",
    "CamkitValueError",
]


class CamkitError(Exception):
    """Base class of every exception camkit raises on purpose."""


class CamkitValueError(CamkitError, ValueError):
    """An argument has the right type but a value camkit cannot use.

    Raised, for instance, for a layer name the model does not have, a class
    index outside the model's output, or a layer the forward pass never reaches.
    """


class CamkitTypeError(CamkitError, TypeError):
    """An argument has a type camkit does not accept.

    Raised, for instance, for a float class index, an integer input tensor, or
    a layer whose output is a tuple rather than a tensor.
    """


class CamkitModelError(CamkitError, RuntimeError):
    """The model's own forward pass failed on the input camkit was given.

    The message names the input's shape and dtype and repeats the model's
    error, which is chained as ``__cause__``. Typical causes: a wrong number of
    channels, a wrong input size, inputs on another device than the model.
    """


class CamkitStorageError(CamkitError, OSError):
    """Maps could not be written to disk: the folder is not writable, or the disk is full.

    The message names the file and says what failed; the shards written
    before stay readable (:class:`camkit.datasets.MapStore`), and a rerun with
    the same settings resumes after them. The operating system's error is
    chained as ``__cause__``.
    """
