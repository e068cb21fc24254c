"""GuidedLatentPipeline as a diffusers pipeline: the workspace's models/ folder loads with
from_pretrained, saves with save_pretrained (+ model card), budgets override components, old
workspaces migrate on open, and the call takes diffusers' arguments."""
import json
import shutil
import threading
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import UNet2DModel
from huggingface_hub import ModelCard

from core import GuidedLatentPipeline
from core.config.store import save_config
from core.errors import UserError
from core.io import folder_hash
from core.models import build_classifier, build_unet
from core.generate.loading import load_pipeline, model_index, write_model_index
from core.generate.pipeline import interrupt_when
from core.protocol.stages import output_hash
from core.workspace import LAB_CONFIG, Workspace

KW = dict(guidance_scale=5.0, num_inference_steps=3, eta=1.0)




@pytest.fixture
def pipe(ws, tiny_cfg):
    return load_pipeline(ws, tiny_cfg, "cpu", mixed_precision="no")


def test_models_folder_round_trips_through_from_and_save_pretrained_with_a_model_card(ws, tiny_cfg, pipe, tmp_path):
    index = json.loads((ws.models_dir / "model_index.json").read_text())      # written by load_pipeline
    assert index["latent_classifier"] == ["core.models.latent_classifier", "LatentClassifier"]
    save_config(tiny_cfg, ws.latent_classifier_dir, LAB_CONFIG)
    pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "pool": ["he_slides", "he_slides", "ihc"],
                  "weight": [0.7, 0.7, 0.3]}).to_csv(ws.pools_file, index=False)
    ws.results_dir.mkdir(parents=True, exist_ok=True)
    (ws.results_dir / "summary.md").write_text("| arm | accuracy |\n|---|---|\n| augmented | 0.912 |\n")
    pd.DataFrame({"class": ["tumor"], "fd": [1.25], "fd_floor": [0.5]}).to_csv(ws.quality_csv, index=False)

    pipe.save_pretrained(tmp_path / "export", workspace=ws)
    saved = {k: v for k, v in json.loads((tmp_path / "export" / "model_index.json").read_text()).items()
             if not k.startswith("_")}
    assert saved == {k: v for k, v in model_index().items() if not k.startswith("_")}
    card = ModelCard.load(tmp_path / "export" / "README.md")
    assert card.data.library_name == "diffusers" and card.data.license == "other"
    assert "diffusers:GuidedLatentPipeline" in card.data.tags
    assert "| he_slides | 2 | 0.7 |" in card.text and "| ihc | 1 | 0.3 |" in card.text          # pools
    assert '"preset": "tiny"' in card.text and "models/latent_classifier/lab_config.json" in card.text   # config
    assert "| augmented | 0.912 |" in card.text and "| tumor | 1.25 | 0.5 |" in card.text         # results
    assert "`tumor`, `stroma`" in card.text

    again = GuidedLatentPipeline.from_pretrained(tmp_path / "export")
    a = pipe([0, 1], seeds=[3, 4], output_type="latent", **KW).images
    b = again([0, 1], generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="latent", **KW)
    assert b.seeds == [3, 4]
    torch.testing.assert_close(a, b.images, rtol=0, atol=0)


def test_call_takes_diffusers_arguments(pipe):
    pt = pipe(0, seeds=[1, 2], output_type="pt", **KW).images
    assert pt.shape == (2, 3, 32, 32) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    arr = pipe(0, seeds=[1, 2], output_type="np", **KW).images
    assert arr.shape == (2, 32, 32, 3) and np.allclose(arr, pt.permute(0, 2, 3, 1).numpy())
    images, seeds, interrupted, hashes = pipe([1], seeds=[5], return_dict=False, **KW)
    assert len(images) == 1 and seeds == [5] and interrupted is False and hashes == pipe.model_hashes
    drawn = pipe([0, 1], output_type="latent", **KW)                  # no noise given: its seeds come back
    torch.testing.assert_close(pipe([0, 1], seeds=drawn.seeds, output_type="latent", **KW).images, drawn.images)
    with pytest.raises(UserError, match="callback_on_step_end_tensor_inputs"):
        pipe([0], seeds=[1], callback_on_step_end=lambda *a: a[-1], callback_on_step_end_tensor_inputs=["eps"], **KW)
    with pytest.raises(UserError, match="not both"):
        pipe([0], seeds=[1], generator=[torch.Generator().manual_seed(1)], **KW)
    with pytest.raises(TypeError):
        pipe([0], seeds=[1], mixed_precision="bf16", **KW)                # set once, not per call
    assert pipe.get_label_ids(["stroma", "tumor"]) == [1, 0]


def test_callback_sees_x0_and_its_latents_replace_the_pipelines(pipe):
    seen = []

    def zero_last(p, i, t, tensors):
        seen.append((i, p.num_timesteps, sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == p.num_timesteps - 1 else tensors
    out = pipe([0], seeds=[1], output_type="latent", callback_on_step_end=zero_last,
               callback_on_step_end_tensor_inputs=["latents", "denoised"], **KW)
    assert seen == [(i, 3, ["denoised", "latents"]) for i in range(3)]
    assert float(out.images.abs().max()) == 0.0


def test_stop_event_interrupts_after_the_step_it_is_set_in(pipe):
    stop, steps = threading.Event(), []

    def count(p, i, t, tensors):
        steps.append(i)
        if i == 1:
            stop.set()
        return tensors
    out = pipe([0, 1], seeds=[1, 2], callback_on_step_end=interrupt_when(stop, count), **KW)
    assert out.interrupted and out.images == [] and out.seeds == [] and steps == [0, 1] and pipe.interrupt
    assert not pipe([0], seeds=[1], **KW).interrupted          # the next call starts afresh


def test_settings_are_set_on_the_pipeline(ws):
    write_model_index(ws.models_dir)
    pipe = GuidedLatentPipeline.from_pretrained(ws.models_dir, mixed_precision="bf16", sampler="ddpm")
    assert (pipe.mixed_precision, pipe.sampler, pipe.compile) == ("bf16", "ddpm", False)
    assert type(pipe.sampling_scheduler()).__name__ == "DDPMScheduler"
    assert not any(p.requires_grad for p in pipe.latent_classifier.parameters())     # frozen at load
    with pytest.raises(UserError, match="sampler"):
        pipe.with_settings(sampler="euler")


def test_budgets_load_the_root_pipeline_with_their_classifier_and_finetuned_unet(ws, tiny_cfg):
    cfg = replace(tiny_cfg, latent_classifier=replace(tiny_cfg.latent_classifier, finetune_unet=True))
    other = ws.for_budget("f0.5", primary=False)
    torch.manual_seed(2)
    build_classifier(tiny_cfg, ["lymph", "mucus", "debris"], 4, 1000).save_pretrained(other.latent_classifier_dir)
    root = load_pipeline(ws, cfg, "cpu")
    assert list(root.latent_classifier.config.class_names) == ["tumor", "stroma"]
    assert root.model_hashes["unet_hash"] == folder_hash(ws.unet_dir)       # no fine-tuned UNet at the root
    torch.manual_seed(3)
    build_unet(tiny_cfg.pretrain, tiny_cfg.latent_size, 4).save_pretrained(other.finetuned_unet_dir)
    pipe = load_pipeline(other, cfg, "cpu")
    assert list(pipe.latent_classifier.config.class_names) == ["lymph", "mucus", "debris"]
    tuned = UNet2DModel.from_pretrained(other.finetuned_unet_dir).state_dict()
    assert all(torch.equal(v, tuned[k]) for k, v in pipe.unet.state_dict().items())
    assert pipe.model_hashes == {"unet_hash": folder_hash(other.finetuned_unet_dir),
                                 "vae_hash": folder_hash(ws.autoencoder_dir),
                                 "classifier_hash": folder_hash(other.latent_classifier_dir)}
    plain = load_pipeline(other, tiny_cfg, "cpu")          # finetune_unet off: the pre-trained UNet
    assert plain.model_hashes["unet_hash"] == folder_hash(ws.unet_dir)


def test_a_workspace_with_the_old_folder_names_is_migrated_on_open(ws, tiny_cfg, tmp_path):
    other = ws.for_budget("f0.5", primary=False)
    build_classifier(tiny_cfg, ["tumor", "stroma"], 4, 1000).save_pretrained(other.latent_classifier_dir)
    hashes = {stage: output_hash(view, stage) for stage, view in
              (("autoencoder", ws), ("latent_classifier", ws), ("latent_classifier", other))}
    weights = {name: folder_hash(path) for name, path in
               (("vae", ws.autoencoder_dir), ("latent_classifier", ws.latent_classifier_dir))}
    old = tmp_path / "old"                 # the older layouts: models/autoencoder, models/classifier
    shutil.copytree(ws.root, old)
    (old / "models" / "vae").rename(old / "models" / "autoencoder")
    for models in (old / "models", old / "budgets" / "f0.5" / "models"):
        (models / "latent_classifier").rename(models / "classifier")
    (old / "metrics").mkdir(exist_ok=True)
    (old / "metrics" / "classifier.jsonl").write_text('{"step": 1}\n')
    (old / "results").mkdir()
    (old / "results" / "runs.csv").write_text("run_key,latent_classifier,filter_classifier\n"
                                              "k1,models/classifier,models/filter_classifier\n"
                                              "k2,budgets/f0.5/models/classifier,x\n")

    opened = Workspace(old)
    assert sorted(p.name for p in opened.models_dir.iterdir()) == ["latent_classifier", "scheduler", "unet", "vae"]
    assert (old / "budgets" / "f0.5" / "models" / "latent_classifier" / "config.json").exists()
    assert (old / "metrics" / "latent_classifier.jsonl").exists()
    assert list(pd.read_csv(opened.results_dir / "runs.csv")["latent_classifier"]) == \
        ["models/latent_classifier", "budgets/f0.5/models/latent_classifier"]
    moved = opened.for_budget("f0.5", primary=False)
    assert {stage: output_hash(view, stage) for stage, view in
            (("autoencoder", opened), ("latent_classifier", opened), ("latent_classifier", moved))} == hashes
    assert {"vae": folder_hash(opened.autoencoder_dir), "latent_classifier": folder_hash(opened.latent_classifier_dir)} \
        == weights
    assert load_pipeline(moved, tiny_cfg, "cpu").model_hashes["classifier_hash"] == \
        folder_hash(moved.latent_classifier_dir)


def test_margin_samples_a_wider_canvas_and_keeps_its_centre_tile(pipe):
    """margin=m: the UNet denoises (tile + 2m) latent px, the decoder sees the whole canvas and
    the tile-sized centre is returned, so the UNet's edges fall outside the image."""
    from core.models import decode
    tile = pipe.unet.config.sample_size
    wide = pipe.with_settings(margin=2)
    canvas = wide(0, seeds=[3], output_type="latent", **KW).images
    image = wide(0, seeds=[3], output_type="pt", **KW).images
    assert canvas.shape[-1] == tile + 4
    crop = 2 * pipe.image_processor.config.vae_scale_factor
    with torch.no_grad():
        whole = (decode(pipe.vae, canvas).float() + 1) / 2
    assert image.shape[-1] == whole.shape[-1] - 2 * crop == tile * pipe.image_processor.config.vae_scale_factor
    torch.testing.assert_close(image, whole[..., crop:-crop, crop:-crop], atol=1e-5, rtol=1e-5)
    plain = pipe(0, seeds=[3], output_type="pt", **KW).images
    assert plain.shape == image.shape and not torch.allclose(plain, image)
    with pytest.raises(UserError, match="margin"):
        pipe.with_settings(margin=-1)


def test_a_pipeline_handed_out_is_not_changed_by_a_later_lookup_with_other_settings(ws, tiny_cfg):
    first = load_pipeline(ws, tiny_cfg, "cpu", mixed_precision="no", sampler="ddim", compile=False)
    before = first(0, seeds=[3], output_type="latent", **KW)
    other = load_pipeline(ws, tiny_cfg, "cpu", mixed_precision="bf16", sampler="ddpm", compile=True, margin=2)
    assert other is not first and other.unet is first.unet                 # other settings, the same weights
    assert (first.mixed_precision, first.sampler, first.compile, first.margin) == ("no", "ddim", False, 0)
    assert (other.mixed_precision, other.sampler, other.compile, other.margin) == ("bf16", "ddpm", True, 2)
    after = first(0, seeds=[3], output_type="latent", **KW)
    torch.testing.assert_close(after.images, before.images, rtol=0, atol=0)
    assert after.model_hashes == before.model_hashes == first.model_hashes
    assert load_pipeline(ws, tiny_cfg, "cpu", mixed_precision="no", sampler="ddim", compile=False) is first
    with pytest.raises(AttributeError):
        first.compile = True                                               # settings are read-only
    with pytest.raises(TypeError, match="unknown pipeline setting"):
        load_pipeline(ws, tiny_cfg, "cpu", scheduler="ddim")


def test_an_interrupt_stops_only_the_call_of_its_own_thread(pipe):
    """The app samples with one cached pipeline from several threads: `pipe._interrupt`, set by
    one call's callback, must not end another call running at the same time."""
    both_stepped, results = threading.Barrier(2, timeout=30), {}

    def interrupter(p, i, t, tensors):
        p._interrupt = True
        both_stepped.wait()
        return tensors

    def bystander(p, i, t, tensors):
        if i == 0:
            both_stepped.wait()
        return tensors

    def run(name, callback):
        results[name] = pipe([0], seeds=[1], output_type="latent", callback_on_step_end=callback, **KW)
    threads = [threading.Thread(target=run, args=a) for a in (("stopped", interrupter), ("running", bystander))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results["stopped"].interrupted and not results["running"].interrupted
    assert results["running"].images.shape[0] == 1
