"""A sampling request and its round trip through a PNG: the parameters written into an image
(`image_params`) are the ones that remake it (`png_params` -> `request_from_params`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    PNG, an unreadable one, or one without parameters."""
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


def request_from_params(params: dict) -> SamplingRequest:
    """The request that remakes the image exactly: its whole batch when it was sampled in one
    (consecutive seeds, as the app samples them), else the seed alone."""
    try:
        seed = int(params["seed"])
        batch = [int(b) for b in params.get("batch_seeds") or [seed]]
        if seed not in batch or batch != list(range(batch[0], batch[0] + len(batch))):
            batch = [seed]
        return SamplingRequest(class_name=str(params["class"]), guidance_scale=float(params["guidance_scale"]),
                               steps=int(params["steps"]), eta=float(params["eta"]), seed=batch[0],
                               num_images=len(batch), batch_size=len(batch),
                               guidance_interval=check_interval(params.get("guidance_interval")))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"the PNG parameters lack a usable field: {e}") from e


def parse_interval(text: str | None) -> tuple[int, int] | None:
    """"LO, HI" (timesteps) -> (LO, HI); empty text -> None (guidance at every timestep)."""
    parts = [p.strip() for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        return check_interval(tuple(int(p) for p in parts))
    except ValueError as e:
        raise UserError(f"guidance interval must be two whole timesteps LO, HI (or empty), got {text!r}") from e
