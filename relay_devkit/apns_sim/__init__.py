"""A local stand-in for Apple's APNs provider API (HTTP/2 over TLS), told how to misbehave."""

from relay_devkit.apns_sim.command import Simulator, SimulatorOptions
from relay_devkit.apns_sim.faults import FaultConfig

__all__ = ["FaultConfig", "Simulator", "SimulatorOptions"]
