"""Communication-aware compression of the device part: incremental channel pruning, activation pruning of the
transmitted feature, physical shrinking, and the 2-step pruning baseline (Shi et al. 2019).

The product calls :func:`prune_device` (or :func:`two_step_prune`) with a :class:`PruneConfig` and deploys the
returned :class:`PrunedDevice`: ``tail(expand(head(x)))`` is the end-to-end model, ``head`` runs on the device and
emits only the transmitted channels.
"""

from coinference.prune.activation import ActivationMask, Expand, channel_energy, feature_bits
from coinference.prune.checkpoint import FORMAT, load_pruned, save_pruned
from coinference.prune.device import IterationLog, PrunedDevice, device_cost
from coinference.prune.groups import ChannelGroup, Trace, filter_norms, trace
from coinference.prune.incremental import PruneConfig, calibration_batch, prune_device
from coinference.prune.masks import ChannelMasker, select_by_norm
from coinference.prune.schedule import Schedule, check_sparsity
from coinference.prune.shrink import ChannelGather, shrink
from coinference.prune.two_step import TwoStepConfig, two_step_prune

__all__ = [
    "FORMAT",
    "ActivationMask",
    "ChannelGather",
    "ChannelGroup",
    "ChannelMasker",
    "Expand",
    "IterationLog",
    "PruneConfig",
    "PrunedDevice",
    "Schedule",
    "Trace",
    "TwoStepConfig",
    "calibration_batch",
    "channel_energy",
    "check_sparsity",
    "device_cost",
    "feature_bits",
    "filter_norms",
    "load_pruned",
    "prune_device",
    "save_pruned",
    "select_by_norm",
    "shrink",
    "trace",
    "two_step_prune",
]
