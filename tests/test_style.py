"""Neural style transfer backend: the maths on the toy VAE's features (judged by the toy-world
judge), the VGG-19 loading path, manifest checks, and one run through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.generate.backends.style import load_feature_net, moments, stylise
from pipelines.toyworld.judge import judge
from pipelines.toyworld.models import DIFFUSION_DIR
from pipelines.toyworld.world import Attributes, ShapeSpec, render

from .conftest import job_dict, write_job

STEPS, WEIGHT = 200, 0.1


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]


def _image(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def toy_pair() -> tuple[np.ndarray, np.ndarray]:
    content = render(Attributes("shapes", (ShapeSpec("triangle", "red", "large", "left"),), "white"), seed=1)
    style = render(Attributes("shapes", (ShapeSpec("circle", "blue", "small", "centre"),), "black"), seed=2)
    return content, style


def test_style_moves_colour_statistics_and_keeps_the_layout(toy_pair) -> None:
    content, style = toy_pair
    net = load_feature_net(str(DIFFUSION_DIR))
    out = _image(stylise(net, _tensor(content), _tensor(style), [0], STEPS, WEIGHT))
    with torch.no_grad():
        stats = [[moments(f) for f in net(_tensor(im))[0]] for im in (content, style, out)]
    before = sum(float(((c - s) ** 2).sum()) for c, s in zip(stats[0], stats[1]))
    after = sum(float(((o - s) ** 2).sum()) for o, s in zip(stats[2], stats[1]))
    assert after < 0.2 * before, (before, after)  # the style's feature statistics were taken on
    verdict = judge(out)
    # the judge sees the style's background (black, not the content's white) around the content's
    # layout (the triangle still on the left)
    assert verdict.get("background") == "black" and verdict.get("position") == "left", verdict
    assert out.mean() < 0.5 * content.mean(), (out.mean(), content.mean())


def test_style_is_deterministic_per_seed_and_batch_independent(toy_pair) -> None:
    content, style = toy_pair
    net = load_feature_net(str(DIFFUSION_DIR))
    c, s = _tensor(content), _tensor(style)
    a = stylise(net, c, s, [3], 10, WEIGHT)
    assert torch.equal(a, stylise(net, c, s, [3], 10, WEIGHT))
    assert not torch.equal(a, stylise(net, c, s, [4], 10, WEIGHT))
    both = stylise(net, torch.cat([c, c]), torch.cat([s, s]), [3, 4], 10, WEIGHT)
    assert torch.allclose(both[:1], a, atol=2 / 255)  # the same image, up to batched-conv rounding


def test_vgg19_safetensors_loads_through_torchvision(tmp_path: Path) -> None:
    """The loading path real jobs use (VGG-19 features as safetensors); random weights, shape only."""
    from safetensors.torch import save_file
    from torchvision.models import vgg19

    torch.manual_seed(0)
    path = tmp_path / "vgg19.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in vgg19(weights=None).features.state_dict().items()},
              str(path))
    net = load_feature_net(str(path))
    style, content = net(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in style] == [64, 128, 256, 512, 512] and content[0].shape[1] == 512
    with pytest.raises(ValueError, match="neither a VGG-19"):
        load_feature_net(str(tmp_path / "nothing-here"))


def _pngs(tmp_path: Path, toy_pair) -> tuple[Path, Path]:
    content, style = toy_pair
    c, s = tmp_path / "content.png", tmp_path / "style.png"
    Image.fromarray(content).save(c)
    Image.fromarray(style).save(s)
    return c, s


def test_manifest_rows_must_match_the_backend(tiny_models, tmp_path, toy_pair) -> None:
    from pipelines.config import JobSpec
    from pipelines.errors import ManifestError
    from pipelines.execution.runner import prepare

    c, s = _pngs(tmp_path, toy_pair)
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt_id": ["a", "b"], "prompt": ["x", "y"], "seed": [1, 2],
                             "init_image": [str(c), None], "style_image": [str(s), str(s)]}), m)
    spec = job_dict(tiny_models, str(tmp_path / "ds"), manifest={"path": str(m)})
    with pytest.raises(ManifestError, match=r"m.parquet: row 0 \(prompt_id 'a'\): field 'style_image': only "
                                            r"generator.backend 'style'"):
        prepare(JobSpec.model_validate(spec))
    spec["generator"] = {**spec["generator"], "backend": "style", "model": str(DIFFUSION_DIR)}
    with pytest.raises(ManifestError, match=r"row 1 \(prompt_id 'b'\): field 'init_image': required"):
        prepare(JobSpec.model_validate(spec))
    assert not (tmp_path / "ds").exists()


def test_style_job_runs_through_the_pipeline(tiny_models, ray_cluster, tmp_path, toy_pair) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    c, s = _pngs(tmp_path, toy_pair)
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt_id": ["night"], "prompt": ["a red triangle at night"], "seed": [5],
                             "num_images": [3], "init_image": [str(c)], "style_image": [str(s)]}), m)
    out = tmp_path / "ds"
    spec = job_dict(tiny_models, str(out), manifest={"path": str(m)},
                    generator={"backend": "style", "model": str(DIFFUSION_DIR), "steps": 20,
                               "height": 32, "width": 32, "batch_size": 2})
    res = CliRunner().invoke(app, ["run", str(write_job(tmp_path / "job.yaml", spec)), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(next((out / "shards").glob("*.parquet"))).to_pylist()
    assert sorted(r["sample_id"] for r in rows) == ["night_00000", "night_00001", "night_00002"]
    import io
    import json

    images = [np.asarray(Image.open(io.BytesIO(r["png"]))) for r in rows]
    assert all(im.shape == (32, 32, 3) and im.mean() < np.asarray(Image.open(c)).mean() for im in images)
    record = json.loads(rows[0]["record"]) if isinstance(rows[0]["record"], str) else rows[0]["record"]
    assert "style" in json.dumps(record)
