"""Accepting a push without HTTP: hold briefly while Redis is away, spool, replay; Live Activity
side pushes."""
