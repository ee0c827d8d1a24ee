"""The iOS-app simulator: the seed's GMSAppDelegate processAPN, driven by APNs simulator pushes."""
