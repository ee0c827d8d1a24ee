"""gms-apns-relay: Genesys Mobile Services push notifications to iPhones over APNs HTTP/2."""

__version__ = "0.1.0"
