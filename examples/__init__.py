"""Worked examples of camkit; the library never imports them."""
