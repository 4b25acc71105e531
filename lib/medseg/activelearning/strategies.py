"""Next-sample strategies that serve the unlabeled image the model is least sure about.

They only read the score cache that the scoring methods of the same name fill in
the background (scoring.UncertaintyScoring), so an answer costs two small JSON reads
however many images there are; nothing is computed inline. Images without a score
for the current weights (new images, new weights) come after the scored ones, in
random order, until the next scoring run covers them.
"""
from __future__ import annotations

import logging
import random

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from medseg.activelearning.reservations import Reservations
from medseg.activelearning.scoring import UncertaintyScoring

logger = logging.getLogger(__name__)


def rank(images: list[str], scores: dict[str, dict], rng: random.Random) -> list[str]:
    """Scored images by descending score (ties by id), then the unscored ones shuffled."""
    scored = sorted((i for i in images if i in scores), key=lambda i: (-scores[i]["score"], i))
    unscored = sorted(i for i in images if i not in scores)
    rng.shuffle(unscored)
    return scored + unscored


class UncertaintyStrategy(Strategy):
    def __init__(self, scoring: UncertaintyScoring, reservations: Reservations):
        super().__init__(f"Unlabeled image with the highest uncertainty ({scoring.method} scoring, cached); "
                         f"an image is withheld from other clients for {reservations.timeout_s:g} s after it is served")
        self.scoring = scoring
        self.reservations = reservations
        self.rng = random.Random()

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images()
        if not images:
            return None
        cache = self.scoring.cache()
        scores = cache.load() if cache else {}
        client_id = str(request.get("client_id") or "anonymous")
        chosen = self.reservations.reserve_first(rank(images, scores, self.rng), client_id)
        if chosen is None:
            logger.info("%s: every unlabeled image is reserved by another client", self.scoring.method)
            return None
        entry = scores.get(chosen)
        return {
            "id": chosen,
            self.scoring.method: {
                "score": entry["score"] if entry else None,
                "scored": entry is not None,
                "model": cache.model if cache else None,
                "model_version": cache.version if cache else None,
            },
            "client_id": client_id,
            "reserved_for_s": self.reservations.timeout_s,
        }


# The strategy clients offer first. Chosen by the whole-loop benchmark (bench/loop.py): a strategy
# becomes the default only when it saves more interactions than random by more than the spread
# between seeds; docs/active-learning.md shows the figures.
DEFAULT_STRATEGY = "random"
DEFAULT_STRATEGY_WHY = (
    "On the whole loop (bench/results/loop_brats_whole_tumour.json: 10 real gliomas, whole tumour, "
    "unet2d retrained every 2 labels, 3 seeds) epistemic did not cost fewer interactions than random over the "
    "10 images, at the target Dice 0.90 or at 0.85 and 0.80; random costs nothing to compute and stays the "
    "default. The others stay available.")


class Described(Strategy):
    """A strategy whose ``/info/`` entry says whether it is the default (and why), so that clients
    preselect the measured best instead of guessing from names."""

    def __init__(self, inner: Strategy, default: bool):
        super().__init__(inner.description)
        self.inner, self.default = inner, default

    def info(self):
        return {**self.inner.info(), "default": self.default,
                **({"default_why": DEFAULT_STRATEGY_WHY} if self.default else {})}

    def __call__(self, request, datastore: Datastore):
        return self.inner(request, datastore)


def with_default_first(strategies: dict[str, Strategy], default: str = DEFAULT_STRATEGY) -> dict[str, Strategy]:
    """The strategies, the default first (clients that show them in order preselect it), each described."""
    order = [default] + [name for name in strategies if name != default]
    return {name: Described(strategies[name], name == default) for name in order if name in strategies}
