"""Train one model on a studies folder from the command line, on one or many GPUs.

The same train task as ``POST /train/<model>``, without a server: useful for long
runs on a GPU node. Under torchrun every process joins the process group, trains
its share of each batch, and rank 0 publishes the weights into the datastore's
work folder, where a running server picks them up without a restart.

    # one machine, 4 GPUs
    torchrun --standalone --nproc_per_node 4 -m medseg.train_cli --studies /data/studies --model unet3d \
        --option max_iterations=2000
    # two machines with 8 GPUs each (run on both; --node_rank 0 and 1; shared filesystem)
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0:29500 \
        -m medseg.train_cli --studies /shared/studies --model unet3d
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from medseg.checkpoint import model_stores
from medseg.config import AppConfig
from medseg.datastore.local import STUDY_FILE_PATTERNS, MedSegLocalDatastore
from medseg.pipeline.distributed import init_from_environment, is_main_process
from medseg.tasks.train import train_tasks

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "medseg"


def parse_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
    return key.strip(), value.strip()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", required=True, help="studies folder (as for start_server)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--app", default=str(APP_DIR), help="app folder (shipped weights)")
    ap.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="the server's --conf settings (labels, work_dir, modality, gpu_memory_gb, device)")
    ap.add_argument("--option", type=parse_option, action="append", default=[],
                    help="a training option as in the POST /train/ body, e.g. max_iterations=500")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    init_from_environment()
    conf = dict(args.conf)
    conf["models"] = args.model
    cfg = AppConfig.from_conf(conf, args.studies, args.app)
    datastore = MedSegLocalDatastore(args.studies, labels=cfg.labels, extensions=STUDY_FILE_PATTERNS,
                                     auto_reload=False)
    task = train_tasks(cfg, model_stores(cfg))[args.model]
    result = task(dict(args.option), datastore)
    if is_main_process():
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
