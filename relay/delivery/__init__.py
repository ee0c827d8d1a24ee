"""Delivery: claiming due notifications, sending them to APNs through aioapns, settling the outcome;
route circuits and credential rotation."""
