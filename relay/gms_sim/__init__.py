"""The GMS simulator: the seed's callback dialogs over HTTP, and scenarios that push as GMS does."""
