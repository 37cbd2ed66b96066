"""evals/soups.py: Rewarded Soups' interpolation by hand (float, bf16 and integer tensors,
mismatched keys and shapes), the soup endpoints equal the two models exactly, and a weight outside
[0, 1] is refused. The soups through evaluate.py (cached, lam = 1 and 0 reproduce the two runs'
answers) are in tests/test_evaluate.py."""
import pytest
import torch

from conftest import make_tiny_mistral
from evals.soups import interpolate_state_dicts, parse_lambdas, soup_state_dict


def test_interpolate_state_dicts():
    a = {"w": torch.randn(3, 2), "h": torch.randn(4).bfloat16(), "n": torch.tensor([7])}
    b = {"w": torch.randn(3, 2), "h": torch.randn(4).bfloat16(), "n": torch.tensor([9])}
    for lam, want in ((1.0, a), (0.0, b)):
        out = interpolate_state_dicts(a, b, lam)
        assert torch.equal(out["w"], want["w"]) and torch.equal(out["h"], want["h"])
    mid = interpolate_state_dicts(a, b, 0.25)
    torch.testing.assert_close(mid["w"], 0.25 * a["w"] + 0.75 * b["w"])
    assert mid["h"].dtype == torch.bfloat16 and mid["n"].item() == 7
    with pytest.raises(ValueError, match="different keys"):
        interpolate_state_dicts(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(a, {**b, "w": torch.zeros(2, 3)}, 0.5)


def test_soup_interpolation_endpoints_equal_the_two_models():
    h, s = make_tiny_mistral(40, seed=1), make_tiny_mistral(40, seed=2)
    sd_h, sd_s = h.state_dict(), s.state_dict()
    for lam, want in ((1.0, sd_h), (0.0, sd_s)):
        soup = soup_state_dict(sd_h, sd_s, lam)
        assert soup.keys() == want.keys() and all(torch.equal(soup[k], want[k]) for k in want)
    mid = soup_state_dict(sd_h, sd_s, 0.25)
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(mid[k], 0.25 * sd_h[k] + 0.75 * sd_s[k])
    model = make_tiny_mistral(40, seed=3).eval()
    model.load_state_dict(soup_state_dict(sd_h, sd_s, 1.0))
    ids = torch.tensor([[1, 5, 7, 9]])
    assert torch.equal(model(input_ids=ids).logits, h.eval()(input_ids=ids).logits)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        soup_state_dict(sd_h, sd_s, 1.5)


def test_soup_lambdas_are_numbers_in_the_unit_interval():
    assert parse_lambdas("0.2,0.4,0.6,0.8") == [0.2, 0.4, 0.6, 0.8]
    assert parse_lambdas("1,0") == [1.0, 0.0]
    for bad in ("0.5,2", "-0.1", "nan", "a,b", ""):
        assert parse_lambdas(bad) is None, bad
