"""The map store's files, private to :mod:`camkit.datasets`: one concern a module.

:mod:`~camkit._store.files` (atomic writes, checksums, the folder's fsync,
storage errors), :mod:`~camkit._store.lock` (one writing job per folder),
:mod:`~camkit._store.manifest` (reading, checking and comparing manifests) and
:mod:`~camkit._store.fingerprints` (what identifies the model and the dataset a
store was written from).
"""
