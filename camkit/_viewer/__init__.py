"""The map store viewer's page: its HTML, script and styles, copied as they are by
:func:`camkit.view` (no build step, no third-party code, nothing fetched)."""
