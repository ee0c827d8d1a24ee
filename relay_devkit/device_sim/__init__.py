"""The iOS-app simulator: processAPN with a scripted user, the dialogs' directives, chat over
CometD, driven by the APNs simulator's pushes."""
