"""MONAI Label's radiology `segmentation` config with the benchmark's patch and spacing.

bench/peers/monailabel_segmentation.py copies this file into a copy of the sample app
shipped in the monailabel 0.8.5 wheel (``<venv>/monailabel/sample-apps/radiology``) as
``lib/configs/segmentation_bench.py``. Everything else is the stock recipe of
``lib/configs/segmentation.py`` (SegResNet, init_filters 32, blocks_down 1-2-2-4,
blocks_up 1-1-1, dropout 0.2), ``lib/trainers/segmentation.py`` (AdamW lr 1e-4,
DiceCE, random crops of the ROI size, per-image z-score, Gaussian smoothing, scaling
to [-1, 1]) and ``lib/infers/segmentation.py`` (sliding window of the ROI size,
overlap 0.4, Gaussian weighting). Only two numbers change, from conf keys, so that
every model and peer trains on the same patch at the same resolution:
``roi_size`` (stock 96^3, at 1.5 mm) and ``target_spacing`` (stock 1.5 mm).
"""
import json

from lib.configs.segmentation import Segmentation

from monailabel.interfaces.config import TaskConfig


# The app discovers configs by their direct base class being named TaskConfig
# (monailabel.utils.others.class_utils.get_class_names), hence the second base.
class SegmentationBench(Segmentation, TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.roi_size = tuple(int(x) for x in json.loads(conf["bench_roi_size"]))
        self.target_spacing = tuple(float(x) for x in json.loads(conf["bench_target_spacing"]))
