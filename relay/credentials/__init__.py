"""APNs credentials: the model, key and certificate files (bounded reads), the check's verdict,
rotation on SIGHUP."""
