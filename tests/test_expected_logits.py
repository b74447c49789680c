"""Every registered model's logits on a fixed input, against the values stored in tests/fixtures (torchvision's
expected-output tests, without pickle): a change in any net's initialisation or forward computation fails here.

The recipe (seed, BN values, input, float64) is tools/make_expected_logits.py's, imported from there so that the test
and the generator cannot disagree; the stored numbers are the generator's output at the commit that made them.
Regenerate them only after a deliberate change, with ``python tools/make_expected_logits.py``.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from resnet.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "expected_logits.safetensors"


def _recipe():
    spec = importlib.util.spec_from_file_location("make_expected_logits", ROOT / "tools" / "make_expected_logits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _recipe()


@pytest.fixture(scope="module")
def expected():
    from safetensors.torch import load_file

    return load_file(FIXTURE)


def test_the_fixture_covers_every_registered_model_and_nothing_else(expected):
    stored = {k.rsplit(".", 1)[0] for k in expected}
    assert stored == set(MODELS), f"run tools/make_expected_logits.py: missing {set(MODELS) - stored}, " \
                                  f"stale {stored - set(MODELS)}"
    for name, cfg in MODELS.items():
        assert expected[f"{name}.logits"].dtype == torch.float64
        assert expected[f"{name}.logits"].shape == (recipe.SHAPES[cfg.family][0], recipe.KEEP)


def test_the_fixed_input_is_pinned():
    # the input is made without a random generator; pin a few of its values so that a change of it is seen as such
    x = recipe.fixed_input("cifar")
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float64
    assert x.flatten()[:3].tolist() == pytest.approx([0.0, 0.3894183423086505, 0.5845003014183872], abs=1e-15)
    assert torch.equal(recipe.fixed_input("imagenet").flatten(), x.flatten()[:3 * 32 * 32])


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_the_stored_ones(name, expected):
    if f"{name}.logits" not in expected:
        pytest.fail(f"no stored logits for {name}: run tools/make_expected_logits.py --only {name}")
    logits, state = recipe.model_outputs(name)
    # the state first, so that a failure says which half drifted: the initialisation (and BN values) or the forward
    torch.testing.assert_close(state, expected[f"{name}.fingerprint"], rtol=1e-10, atol=0,
                               msg=lambda m: f"{name}: the initial state changed (init, BN or parameter set)\n{m}")
    want = expected[f"{name}.logits"]
    scale = float(want.abs().max())
    torch.testing.assert_close(logits, want, rtol=1e-9, atol=1e-9 * scale,
                               msg=lambda m: f"{name}: the forward computation changed\n{m}")


def test_the_comparison_can_fail(expected):
    """The tolerance is tight enough to tell two nets apart: plain-20's logits (the same layers without shortcuts,
    the same initial weights) are not resnet20's."""
    other, _ = recipe.model_outputs("plain20")
    want = expected["resnet20.logits"]
    assert not torch.allclose(other, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))