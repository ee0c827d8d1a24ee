"""The GMS simulator: the seed's dialogs, callbacks as a state machine, chat over CometD."""
