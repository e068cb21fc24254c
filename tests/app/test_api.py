"""The served app through gradio_client: named endpoints and parameters, sampling streams,
progress arrives, stop ends the core loop, the compute slot is shared, the threshold endpoint
re-filters."""
from __future__ import annotations

import time

import pytest

from served import serve


@pytest.fixture(scope="module")
def served_app(lab_workspace):
    from app.context import AppContext
    from gradio_client import Client
    ctx = AppContext.create(lab_workspace.root)
    with serve(ctx) as (demo, url):
        yield ctx, Client(url, verbose=False, download_files=False)


def _wait_running(ctx, previous_id, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        st = ctx.runner.status()
        if st["job_id"] != previous_id and st["state"] == "running" and st["step"] > 0:
            return st
        time.sleep(0.05)
    raise AssertionError(f"sampling did not start: {ctx.runner.status()}")


def _sample_args(name, steps=3, num=3, batch=1, seed=5):
    return dict(class_name=name, guidance_scale=2.0, steps=steps, eta=1.0, seed=seed, num_images=num,
                batch_size=batch)


SAMPLE_PARAMS = ["class_name", "guidance_scale", "steps", "eta", "seed", "num_images", "batch_size"]


def test_every_endpoint_and_parameter_has_a_name(served_app):
    """What a researcher scripting the lab sees in `client.view_api()`: named endpoints with
    named parameters, and none of the UI-internal events (page load, timers, gallery clicks)."""
    _, client = served_app
    info = client.view_api(print_info=False, return_format="dict")
    assert not info["unnamed_endpoints"]
    endpoints = info["named_endpoints"]
    params = {name: [p["parameter_name"] for p in ep["parameters"]] for name, ep in endpoints.items()}
    assert params["/sample"] == SAMPLE_PARAMS
    assert params["/grid"] == ["classes", "guidance_scales", "seed", "steps", "eta"]
    assert params["/pretrain_start"] == ["preset_name", "steps", "batch_size", "lr", "checkpoint_every",
                                         "sample_every"]
    assert params["/refilter"] == ["threshold", "strategy", "quota", "show", "class_name", "per_class", "realism"]
    assert params["/export_accepted"] == ["threshold", "strategy", "quota", "realism"]
    unnamed = {n: p for n, p in params.items() if any(x.startswith("param_") for x in p)}
    assert not unnamed, unnamed
    internal = [n for n in params if n.startswith(("/lambda", "/on_", "/refresh", "/tick", "/handler"))]
    assert not internal, internal


def test_sample_called_by_keyword(served_app):
    ctx, client = served_app
    from app.tab_sampling import class_names
    from core.io import read_png_params
    name = class_names(ctx)[-1]
    job = client.submit(class_name=name, guidance_scale=1.5, steps=2, eta=0.5, seed=11, num_images=2,
                        batch_size=2, api_name="/sample")
    gallery, _, status = job.result(timeout=120)
    assert len(gallery) == 2 and "done" in status
    params = [read_png_params(item["image"]["path"]) for item in gallery]
    assert [(p["class"], p["guidance_scale"], p["steps"], p["eta"], p["seed"], p["batch_seeds"]) for p in params] \
        == [(name, 1.5, 2, 0.5, seed, [11, 12]) for seed in (11, 12)]


def test_pretrain_fields_arrive_by_name(served_app, monkeypatch):
    """The pre-training fields travel as keyword inputs: each lands under its own config name."""
    from app import tab_pretrain
    _, client = served_app
    seen = []
    monkeypatch.setattr(tab_pretrain, "start_pretrain", lambda ctx, preset_name, fields, fresh:
                        seen.append((preset_name, fields, fresh)) or "recorded")
    fields = dict(steps=7, batch_size=3, lr=0.002, checkpoint_every=5, sample_every=6)
    assert client.predict(preset_name="tiny", **fields, api_name="/pretrain_fresh") == "recorded"
    assert seen == [("tiny", fields, True)]


def test_sampling_streams_images_and_progress(served_app):
    ctx, client = served_app
    from app.tab_sampling import class_names
    job = client.submit(**_sample_args(class_names(ctx)[0]), api_name="/sample")
    outputs = list(job)
    sizes = [len(o[0]) for o in outputs]
    assert sizes[-1] == 3 and {1, 2} <= set(sizes)                  # the gallery filled step by step
    assert any("running" in o[2] for o in outputs)                   # progress arrived while running
    assert "done" in outputs[-1][2]


def test_stop_endpoint_stops_the_core_loop(served_app):
    ctx, client = served_app
    from app.tab_sampling import class_names
    before = ctx.runner.status()["job_id"]
    job = client.submit(**_sample_args(class_names(ctx)[0], steps=200, num=2, batch=2), api_name="/sample")
    _wait_running(ctx, before)
    client.predict(api_name="/sample_stop")
    job.result(timeout=30)
    status = ctx.runner.wait(10)
    assert status["state"] == "stopped" and status["step"] < status["total"]


def test_client_cancel_stops_the_core_loop(served_app):
    """Gradio closes the handler's generator on cancel; the handler then stops the job."""
    ctx, client = served_app
    from app.tab_sampling import class_names
    before = ctx.runner.status()["job_id"]
    job = client.submit(**_sample_args(class_names(ctx)[0], steps=200, num=64, batch=1), api_name="/sample")
    _wait_running(ctx, before)
    end = time.time() + 30
    while time.time() < end and not job.outputs():     # the client must see the event streaming
        time.sleep(0.05)
    job.cancel()
    status = ctx.runner.wait(30)
    assert status["state"] == "stopped" and status["progress"] < 0.5


def test_compute_events_share_one_slot(served_app):
    ctx, client = served_app
    from app.tab_sampling import class_names
    name = class_names(ctx)[0]
    jobs = [client.submit(**_sample_args(name, steps=20, num=2, batch=2, seed=s), api_name="/sample")
            for s in (1, 2)]
    results = [j.result(timeout=60) for j in jobs]             # the second waited, it was not refused
    assert all(len(r[0]) == 2 and "done" in r[2] for r in results)


def test_threshold_endpoint_refilters(served_app):
    ctx, client = served_app
    ask = dict(strategy="threshold", quota=0, show="accepted", class_name="all classes", per_class=8)
    low = client.predict(threshold=0.1, **ask, api_name="/refilter")
    high = client.predict(threshold=0.9, **ask, api_name="/refilter")
    assert "accepted" in low[0] and low[0] != high[0]
    assert len(low[2]) > len(high[2])


def test_files_outside_the_shown_folders_are_not_served(served_app):
    """The workspace's config, models and the data roots are not fetchable; uploads are capped."""
    import httpx
    ctx, client = served_app
    base = client.src.rstrip("/")
    ws = ctx.workspace
    secret = next(ws.unet_dir.glob("*.safetensors"))
    assert httpx.get(f"{base}/gradio_api/file={ws.root / 'config.json'}").status_code == 403
    assert httpx.get(f"{base}/gradio_api/file={secret}").status_code == 403
    shown = next(ws.synthetic_dir.rglob("*.png"))
    assert httpx.get(f"{base}/gradio_api/file={shown}").status_code == 200
    big = httpx.post(f"{base}/gradio_api/upload", files={"files": ("big.png", b"0" * 6_000_000)})
    assert big.status_code >= 400


def test_read_params_names_what_is_wrong(served_app):
    from gradio_client.exceptions import AppError
    ctx, client = served_app
    ws = ctx.workspace.root
    (ws / "results" / "not-a-png.png").write_text("hello")
    cases = [("results/not-a-png.png", "is not a PNG file"), ("results/a\0b.png", "NUL byte"),
             ("x" * 5000 + ".png", "too long"), ("results", "is a folder"),
             ("results/runs.csv", "is not a PNG file"), ("/etc/passwd", "outside the workspace")]
    for text, reason in cases:
        with pytest.raises(AppError, match=reason):
            client.predict(path=text, api_name="/read_params")


def test_a_request_after_a_disconnect_is_queued_not_refused(served_app):
    """A client that drops its connection mid-stream leaves a job that stops within a step; the
    next request waits for it instead of failing with "'sampling' is running". How long that wait
    is: benchmarks/app_latency.py."""
    import uuid

    import httpx

    from app.tab_sampling import class_names
    ctx, client = served_app
    base = client.src.rstrip("/")
    fn_index = next(i for i, d in enumerate(client.config["dependencies"]) if d.get("api_name") == "sample")
    session = uuid.uuid4().hex
    args = list(_sample_args(class_names(ctx)[0], steps=200, num=64, batch=1, seed=1000).values())
    before = ctx.runner.status()["job_id"]
    httpx.post(f"{base}/gradio_api/queue/join", json={"data": args, "fn_index": fn_index,
                                                      "session_hash": session, "event_data": None,
                                                      "trigger_id": None}).raise_for_status()
    with httpx.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session},
                      timeout=30) as sse:
        for line in sse.iter_lines():                   # read until the job streams, then drop it
            if "process_generating" in line:
                break
    _wait_running(ctx, before)
    out = client.predict(**_sample_args(class_names(ctx)[0], steps=2, num=1), api_name="/sample")
    assert len(out[0]) == 1 and "done" in out[2]
    written = (ctx.workspace.samples_dir / "lab").rglob("*_n200_*.png")
    dropped = [p.name for p in written if int(p.name.split("_seed")[1].split("_")[0]) >= 1000]
    assert len(dropped) < 64, dropped                   # the dropped request stopped short of its end


def test_a_session_sets_its_guidance_interval_and_samples_with_it(served_app):
    """The guidance interval is a session setting (/guidance_interval), not a /sample parameter:
    /sample keeps its parameters, and a session that set an interval samples with it."""
    from gradio_client import Client

    from app.tab_sampling import class_names
    from core.io import read_png_params
    ctx, client = served_app
    session = Client(client.src, verbose=False, download_files=False)
    session.predict(interval="0, 400", api_name="/guidance_interval")
    gallery, _, status = session.predict(**_sample_args(class_names(ctx)[0], steps=2, num=1), api_name="/sample")
    assert read_png_params(gallery[0]["image"]["path"])["guidance_interval"] == [0, 400]
    gallery, _, _ = client.predict(**_sample_args(class_names(ctx)[0], steps=2, num=1), api_name="/sample")
    assert "guidance_interval" not in read_png_params(gallery[0]["image"]["path"])   # other sessions: every step
    with pytest.raises(Exception, match="guidance.interval"):
        session.predict(interval="400, 0", api_name="/guidance_interval")
