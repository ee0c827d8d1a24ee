"""Pure domain: notifications, push types, alerts, GMS inputs -> push spec -> APNs request, the
delivery policy and route circuits, Live Activity planning. Imports nothing else of relay."""
