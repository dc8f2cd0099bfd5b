import pyarrow as pa
import pytest

from pipelines.plan import manifest

from pipelines.plan import samples as plan
from pipelines.config import GeneratorSpec, TemplateSpec
from pipelines.errors import SynthgenError

GEN = GeneratorSpec(model="m", steps=5, guidance_scale=2.0, height=32, width=32)


def _table(rows):
    return manifest.to_canonical(rows)


def test_ids_and_seeds_are_per_row_and_stable():
    t = _table([{"prompt_id": "a", "prompt": "x", "seed": 10, "num_images": 3},
                {"prompt_id": "b", "prompt": "y", "seed": 11, "num_images": 2, "steps": 9}])
    s = plan.expand(t, GEN)
    assert [x.sample_id for x in s] == ["a_00000", "a_00001", "a_00002", "b_00000", "b_00001"]
    assert [x.seed for x in s] == [10, 11, 12, 11, 12]
    assert s[3].steps == 9 and s[0].steps == 5  # per-row override, else the job default


def test_units_are_fixed_size_in_manifest_order():
    t = _table([{"prompt_id": f"p{i}", "prompt": "x", "seed": i, "num_images": 5} for i in range(4)])
    u = plan.units(plan.expand(t, GEN), 6)
    assert [len(x.samples) for x in u] == [6, 6, 6, 2]
    assert [x.unit_id for x in u] == ["u000000", "u000001", "u000002", "u000003"]
    assert u[1].samples[0].sample_id == "p1_00001"


def test_batches_group_compatible_samples_deterministically():
    t = _table([{"prompt_id": "a", "prompt": "x", "seed": 1, "num_images": 3},
                {"prompt_id": "b", "prompt": "y", "seed": 1, "num_images": 2, "steps": 9},
                {"prompt_id": "c", "prompt": "z", "seed": 1, "num_images": 2}])
    b = plan.batches(plan.expand(t, GEN), 2)
    assert [[s.sample_id for s in x] for x in b] == [
        ["a_00000", "a_00001"], ["a_00002", "c_00000"], ["c_00001"], ["b_00000", "b_00001"]]
    assert all(len({s.compat_key() for s in x}) == 1 for x in b)


def test_template_grid_expands_every_combination():
    t = manifest.expand_templates(TemplateSpec(template="a {c} {s}", slots={"c": ["red", "dark blue"],
                                              "s": ["circle"]}, seeds=[0, 5], num_images=2))
    rows = t.to_pylist()
    assert len(rows) == 4
    assert rows[0]["prompt_id"] == "p-red-circle-s0" and rows[3]["prompt_id"] == "p-dark-blue-circle-s5"
    assert rows[2]["prompt"] == "a dark blue circle" and dict(rows[2]["attributes"]) == {"c": "dark blue",
                                                                                          "s": "circle"}
    assert t.schema == manifest.CANONICAL


def test_a_list_of_grids_with_fixed_attributes_concatenates_in_order():
    grids = [TemplateSpec(template="chest radiograph with a {nodule_size} nodule in the {nodule_side} lung",
                          slots={"nodule_size": ["small"], "nodule_side": ["left", "right"]},
                          attributes={"nodule": "present"}, id_prefix="nodule"),
             TemplateSpec(template="chest radiograph with no nodule", slots={}, id_prefix="normal",
                          attributes={"nodule": "absent", "nodule_side": "none"})]
    rows = manifest.expand_templates(grids).to_pylist()
    assert [r["prompt_id"] for r in rows] == ["nodule-small-left-s0", "nodule-small-right-s0", "normal-s0"]
    assert dict(rows[1]["attributes"]) == {"nodule": "present", "nodule_size": "small", "nodule_side": "right"}
    assert dict(rows[2]["attributes"]) == {"nodule": "absent", "nodule_side": "none"}
    with pytest.raises(SynthgenError, match="prompt_id"):
        manifest.expand_templates([grids[1], grids[1]])
