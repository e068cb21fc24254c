"""The protocol tests' stand-ins: a fast grid config, and the generative stages replaced by
writers of their real output files (the real stages have their own tests)."""
from __future__ import annotations

import json

import pandas as pd

import core.protocol.experiment as experiment
from core.config.checks import apply_overrides
from labdata import make_splits, make_synthetic


def fast(cfg):
    return apply_overrides(cfg, ["filter_classifier.steps=6", "downstream.steps=6", "filter_classifier.batch_size=8", "downstream.batch_size=8", "filter_classifier.lr=0.01", "downstream.lr=0.01",
                                 "experiment.seeds=0,1,2", "experiment.synthetic_ratios=0.5,1.0",
                                 "experiment.topup_rounds=0", "selection.threshold=0.0"])


def fake_generative_stages(monkeypatch, calls):
    """Data, autoencoder, diffusion and sampling replaced by writers of their real output files
    (the real ones are covered by their own tests and the end-to-end run); the filter classifier,
    scoring, selection and the grid run for real."""
    real = experiment.stage_functions

    def writer(stage, write):
        def fn(ws, cfg, progress=None, stop=None):
            calls.append(stage)
            write(ws, cfg)
            return {"stage": stage}
        return fn

    def model_dir(folder):
        def write(ws, cfg):
            folder(ws).mkdir(parents=True, exist_ok=True)
            (folder(ws) / "config.json").write_text(json.dumps({"made_by": folder(ws).name}))
        return write

    def data(ws, cfg):
        make_splits(ws)
        pd.DataFrame({"path": [], "pool": [], "weight": []}).to_csv(ws.data_dir / "pools.csv", index=False)

    def stages(labeled, test, unlabeled):
        out = real(labeled, test, unlabeled)
        out.update(data=writer("data", data),
                   autoencoder=writer("autoencoder", model_dir(lambda ws: ws.autoencoder_dir)),
                   pretrain=writer("pretrain", lambda ws, cfg: (model_dir(lambda w: w.unet_dir)(ws, cfg),
                                                                model_dir(lambda w: w.scheduler_dir)(ws, cfg))),
                   latent_classifier=writer("latent_classifier", model_dir(lambda ws: ws.latent_classifier_dir)),
                   sampling=writer("sampling", lambda ws, cfg: make_synthetic(ws, per_class=12)))
        for name in ("filter_classifier", "scoring", "selection"):
            out[name] = _counted(out[name], name, calls)
        return out
    monkeypatch.setattr(experiment, "stage_functions", stages)


def _counted(fn, name, calls):
    def wrapped(*a, **k):
        calls.append(name)
        return fn(*a, **k)
    return wrapped
