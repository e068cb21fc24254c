"""A sampling request and its round trip through a PNG: the parameters written into an image
(`image_params`) are the ones that remake it (`png_params` -> `request_from_params`)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.config.requests import (MAX_IMAGES, MAX_ITEMS, RequestError, brief, request_count, request_list, request_seed,
                                  request_text, request_value)
from core.errors import UserError
from core.generate.guidance import check_interval
from core.io import read_png_params

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class SamplingRequest:
    """One sampling request; its fields are the parameters written into every PNG."""
    class_name: str
    guidance_scale: float
    steps: int
    eta: float
    seed: int
    num_images: int = 1
    batch_size: int = 1
    guidance_interval: tuple[int, int] | None = None     # (t_lo, t_hi); None: every timestep

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


def image_params(req: SamplingRequest, seed: int, batch_params: dict, batch_seeds: list[int],
                 preset: str | None = None) -> dict[str, Any]:
    """What made one image: the request, the sampled batch's parameters (scheduler, the hashes of
    the models that sampled it) and the seeds sampled in the same batch (batched kernels round
    differently: a seed alone can differ from the same seed in a batch by a few 1/255, so
    regenerating re-runs the batch)."""
    made_by = {k: v for k, v in batch_params.items()
               if k.endswith("_hash") or k in ("latent_margin", "guidance_interval")}
    return {"class": req.class_name, "seed": int(seed), "guidance_scale": req.guidance_scale, "steps": req.steps,
            "eta": req.eta, "scheduler": batch_params.get("scheduler"), "preset": preset,
            "batch_seeds": [int(s) for s in batch_seeds], **made_by}


def png_params(path: str | Path) -> dict:
    """The parameters stored in a PNG's text chunk; a UserError for a folder, a file that is no
    PNG, an unreadable one, or one without parameters.

    Args:
        path (`str` or `Path`): a PNG the lab wrote.

    Returns:
        `dict`: the parameters (class, seed, guidance_scale, steps, eta, ...).

    Raises:
        UserError: as above, or a parameters chunk that is not JSON.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a PNG file")
    try:
        with open(path, "rb") as f:
            is_png = f.read(8) == PNG_SIGNATURE
        params = read_png_params(path) if is_png else None
    except OSError as e:                 # unreadable, or a PNG signature on a broken file
        raise UserError(f"{path} cannot be read as a PNG: {e}") from e
    except ValueError as e:              # the parameters chunk is not JSON
        raise UserError(f"{path} has a parameters text chunk that is not JSON: {e}") from e
    if params is None:
        raise UserError(f"{path} is not a PNG file")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{path} carries no parameters text chunk")
    return params


def sampling_request(class_name: Any, guidance_scale: Any, steps: Any, eta: Any, seed: Any, num_images: Any = 1,
                     batch_size: Any = 1, guidance_interval: Any = None,
                     classes: Sequence[str] | None = None) -> SamplingRequest:
    """A request from raw values (the app's widgets, the named API, a PNG's parameters), each
    checked once (core.config.requests: the config's declarations and the request caps) before
    anything is converted or run; RequestError, one line, naming the first bad parameter.
    Seed -1 (or none) draws a random seed; `classes`, when given, are the ones allowed."""
    seed = -1 if seed is None else request_seed("seed", seed)
    try:
        interval = check_interval(guidance_interval)
    except (TypeError, ValueError) as e:
        raise RequestError(f"guidance_interval: {e}") from None
    return SamplingRequest(
        class_name=request_text("class_name", class_name, classes),
        guidance_scale=request_value("guidance_scale", guidance_scale, "sampling.guidance_scale"),
        steps=request_value("steps", steps, "sampling.steps"),
        eta=request_value("eta", eta, "sampling.eta"),
        seed=random.randrange(0, 2 ** 31 - 1) if seed == -1 else seed,
        num_images=request_count("num_images", num_images, MAX_IMAGES),
        batch_size=request_value("batch_size", batch_size, "sampling.batch_size"),
        guidance_interval=interval)


def grid_request(classes: Any, scales_text: Any, seed: Any, steps: Any, eta: Any,
                 known: Sequence[str]) -> dict[str, Any]:
    """The class x guidance-scale grid's parameters, each checked as `sampling_request` checks
    them: classes among `known` (none: all of them), at most MAX_ITEMS scales."""
    asked = list(known) if classes is None or (isinstance(classes, (list, tuple)) and not classes) else classes
    classes = request_list("classes", asked, lambda n, v: request_text(n, v, known))
    try:
        text = request_text("guidance_scales", scales_text)
        parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
        scales = request_list("guidance_scales", parts,
                              lambda n, v: request_value(n, v, "sampling.guidance_scale"), MAX_ITEMS)
    except RequestError as e:
        raise RequestError(f"guidance scales must be numbers separated by commas ({e})") from None
    if not scales:
        raise RequestError(f"guidance scales must be one or more numbers separated by commas, got {text!r}")
    checked = sampling_request(classes[0] if classes else "", scales[0], steps, eta, seed, classes=None)
    return {"classes": classes, "scales": [float(s) for s in scales], "seed": checked.seed,
            "steps": checked.steps, "eta": checked.eta}


def request_from_params(params: dict) -> SamplingRequest:
    """The request that remakes the image exactly: its whole batch when it was sampled in one
    (consecutive seeds, as the app samples them), else the seed alone. The parameters are
    checked as any request's (they may come from a script through /regenerate).

    Args:
        params (`dict`): a PNG's parameters (`png_params`).

    Returns:
        `SamplingRequest`

    Raises:
        RequestError: a field is missing, of the wrong type or out of its range.
    """
    if not isinstance(params, dict):
        raise RequestError(f"params: expected the parameters object of a PNG, got {type(params).__name__}")
    missing = [k for k in ("class", "seed", "guidance_scale", "steps", "eta") if k not in params]
    if missing:
        raise RequestError(f"params: the PNG parameters lack {', '.join(missing)}")
    seed = request_seed("seed", params["seed"], random_allowed=False)
    batch = params.get("batch_seeds") or [seed]
    batch = request_list("batch_seeds", batch, lambda n, v: request_seed(n, v, random_allowed=False), MAX_IMAGES)
    if seed not in batch or batch != list(range(batch[0], batch[0] + len(batch))):
        batch = [seed]
    return sampling_request(params["class"], params["guidance_scale"], params["steps"], params["eta"], batch[0],
                            num_images=len(batch), batch_size=len(batch),
                            guidance_interval=params.get("guidance_interval"))


def parse_interval(text: str | None) -> tuple[int, int] | None:
    """"LO, HI" (timesteps) -> (LO, HI); empty text -> None (guidance at every timestep)."""
    text = request_text("guidance_interval", "" if text is None else text)
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        return check_interval(tuple(int(p) for p in parts))
    except ValueError as e:
        raise UserError(f"guidance interval must be two whole timesteps LO, HI (or empty), "
                        f"got {brief(text)}") from e
