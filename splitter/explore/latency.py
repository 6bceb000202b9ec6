"""latency: a Neurosurgeon-style end-to-end latency model for a split.

::

    device: head FLOPs / device GFLOP/s ─► link: payload bits / bandwidth + RTT ─► server: tail FLOPs / server GFLOP/s

Kang et al., *Neurosurgeon* (ASPLOS 2017) pick the split that minimises this sum for the
current link and load. Every term is linear, so the model is only as good as the effective
throughputs given: use measured GFLOP/s of the real device at batch 1, not its peak. The
``output`` split still sends the model's output (the server consumes the prediction, as in
the SC2 setting); ``input`` sends the raw input tensor.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Link", "Machine", "LINKS", "LORA", "LTE", "WIFI", "DEVICE", "SERVER", "latency_ms"]


class Link(BaseModel):
    """An uplink: sustained bandwidth in Mbit/s and round-trip time in ms."""

    model_config = ConfigDict(frozen=True)

    bandwidth_mbps: float = Field(gt=0)
    rtt_ms: float = Field(default=0.0, ge=0)
    name: str = "custom"

    def transfer_ms(self, nbytes: float) -> float:
        """Time to send ``nbytes`` and hear back: serialisation + one RTT."""
        return nbytes * 8 / (self.bandwidth_mbps * 1e6) * 1e3 + self.rtt_ms


class Machine(BaseModel):
    """A processor by its effective throughput in GFLOP/s (1 MAC = 2 FLOPs)."""

    model_config = ConfigDict(frozen=True)

    gflops: float = Field(gt=0)
    name: str = "custom"

    def compute_ms(self, flops: float) -> float:
        return flops / (self.gflops * 1e9) * 1e3


# Presets. 37.5 kbit/s is LoRa's top data rate, the figure split-computing surveys use for
# it; LTE and Wi-Fi are typical sustained uplinks, not peak rates.
LORA = Link(bandwidth_mbps=0.0375, rtt_ms=100.0, name="lora")
LTE = Link(bandwidth_mbps=10.0, rtt_ms=50.0, name="lte")
WIFI = Link(bandwidth_mbps=50.0, rtt_ms=5.0, name="wifi")
LINKS = {"lora": LORA, "lte": LTE, "wifi": WIFI}

# A Raspberry-Pi-class CPU at batch 1, and a data-centre GPU's effective batch-1 rate.
DEVICE = Machine(gflops=10.0, name="device")
SERVER = Machine(gflops=1000.0, name="server")


def latency_ms(device_flops: float, payload_bytes: float, tail_flops: float, *,
               link: Link = LTE, device: Machine = DEVICE, server: Machine = SERVER) -> float:
    """Predicted end-to-end latency in milliseconds for one sample."""
    return device.compute_ms(device_flops) + link.transfer_ms(payload_bytes) + server.compute_ms(tail_flops)
