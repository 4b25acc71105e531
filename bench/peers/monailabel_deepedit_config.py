"""MONAI Label's radiology `deepedit` config made class-agnostic: one object per request.

bench/interactive_deepedit.py copies this file into a copy of the sample app shipped in the
monailabel 0.8.5 wheel (``<venv>/monailabel/sample-apps/radiology``) as
``lib/configs/deepedit_bench.py``. The recipe is the stock one of ``lib/configs/deepedit.py``,
``lib/trainers/deepedit.py`` and ``lib/infers/deepedit.py``: DynUNet (6 levels, residual
blocks, instance norm), the whole image resized to ``spatial_size`` (stock 128^3),
intensities windowed to [-175, 250] and scaled to [0, 1], Adam 1e-4, DiceCE, DeepEdit's
click simulation (a first click per label, then clicks on the errors with probability
0.4). Two things change, so that it is measured on our benchmark's task:

* the labels: the stock config hard-codes seven abdominal organs; here there is one,
  ``object`` (value 1), and ``background``. Each training pair is one object of an image,
  the same objects our interactive model trained on, so the network is class-agnostic too,
  and at inference the ``object`` clicks are foreground and the ``background`` clicks
  background;
* ``spatial_size`` from the conf key ``bench_spatial_size`` (default the stock 128^3), so a
  run may use a smaller input on a CPU; the network is rebuilt for the new channel counts.
"""
import json

from lib.configs.deepedit import DeepEdit
from monai.networks.nets import DynUNet

from monailabel.interfaces.config import TaskConfig

LABELS = {"object": 1, "background": 0}


def stock_dynunet(in_channels: int, out_channels: int, dropout: float | None = None) -> DynUNet:
    """The stock config's DynUNet, with the channel counts of these labels."""
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[3, 3, 3, 3, 3, 3],
        strides=[1, 2, 2, 2, 2, [2, 2, 1]],
        upsample_kernel_size=[2, 2, 2, 2, [2, 2, 1]],
        norm_name="instance",
        deep_supervision=False,
        res_block=True,
        dropout=dropout,
    )


# The app discovers configs by their direct base class being named TaskConfig
# (monailabel.utils.others.class_utils.get_class_names), hence the second base.
class DeepEditBench(DeepEdit, TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.spatial_size = tuple(int(x) for x in json.loads(conf.get("bench_spatial_size", "[128,128,128]")))
        channels = len(self.labels) + self.number_intensity_ch
        self.network = stock_dynunet(channels, len(self.labels))
        self.network_with_dropout = stock_dynunet(channels, len(self.labels), dropout=0.2)
