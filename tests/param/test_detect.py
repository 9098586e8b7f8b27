"""Width-dependent constants inside a model, found by measurement at two widths
(hptransfer.param.detect): stock T5's d_model^-1/2 before its tied readout, Gemma's sqrt(d)
embedding scale; none in Llama; a warning (strict: a refusal) where muP stacks on one."""

from __future__ import annotations

import pytest
import torch

from hptransfer.errors import ConfigError
from hptransfer.param.detect import check_stacking, detect_scaling
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule

tf = pytest.importorskip("transformers")

V = 64
X = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))


def t5(w: int, scale: bool = True) -> torch.nn.Module:
    config = tf.T5Config(
        vocab_size=V, d_model=w, d_kv=8, d_ff=2 * w, num_layers=1, num_heads=w // 8
    )
    config.scale_decoder_outputs = scale
    return tf.T5ForConditionalGeneration(config)


def decoder(w: int, cls: str) -> torch.nn.Module:
    shape = dict(vocab_size=V, hidden_size=w, intermediate_size=2 * w, num_hidden_layers=1)
    heads = dict(num_attention_heads=w // 8, num_key_value_heads=w // 8, head_dim=8)
    config = getattr(tf, f"{cls}Config")(**shape, **heads)
    return getattr(tf, f"{cls}ForCausalLM")(config)


def run_t5(m: torch.nn.Module) -> object:
    return m(input_ids=X, decoder_input_ids=X)


def test_t5s_readout_scaling_is_found_with_its_switch() -> None:
    (found,) = detect_scaling(t5, run_t5, (32, 128))
    assert (found.module, found.where) == ("lm_head", "input")
    assert found.exponent == pytest.approx(-0.5, abs=1e-6)
    assert found.factors[0] == pytest.approx(32**-0.5, rel=1e-6)
    assert "config.scale_decoder_outputs = False" in found.switch
    assert detect_scaling(lambda w: t5(w, scale=False), run_t5, (32, 128)) == []


def test_gemmas_embedding_scale_is_found_and_llama_has_none() -> None:
    run = lambda m: m(input_ids=X)  # noqa: E731
    (found,) = detect_scaling(lambda w: decoder(w, "Gemma"), run, (32, 128))
    assert (found.module, found.where) == ("model.embed_tokens", "output")
    assert found.exponent == pytest.approx(0.5, abs=1e-6)
    assert found.switch.startswith("model.embed_tokens.embed_scale = 1")
    assert detect_scaling(lambda w: decoder(w, "Llama"), run, (32, 128)) == []


def test_mup_stacking_on_t5s_scaling_warns_or_is_refused() -> None:
    found = detect_scaling(t5, run_t5, (32, 128))
    with torch.device("meta"):
        roles = roles_from_factory(t5, 128, 32, tied="untie")
    with pytest.warns(UserWarning, match=r"lm_head.weight: mup's output multiplier"):
        (msg,) = check_stacking(found, roles, make_rule("mup", "adam"))
    assert "config.scale_decoder_outputs = False" in msg
    assert check_stacking(found, roles, make_rule("sp", "adam")) == []  # SP: a = 0
    with pytest.raises(ConfigError, match=r"^lm_head.weight: mup's output multiplier"):
        check_stacking(found, roles, make_rule("mup", "adam"), strict=True)


SCALED_LM = '''
import torch
from torch import nn


class ScaledLM(nn.Module):
    """A causal LM that multiplies its readout's input by width^-1/2 itself (as stock T5)."""

    def __init__(self, width, vocab_size=64):
        super().__init__()
        self.width = width
        self.emb = nn.Embedding(vocab_size, width)
        self.fc = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, ids):
        return self.head(self.fc(self.emb(ids)) * self.width**-0.5)


def make(width, vocab_size=64):
    return ScaledLM(width, vocab_size)
'''


def test_rules_model_reports_a_factory_models_own_scaling_and_the_stacking(tmp_path, capsys):
    from hptransfer.cli import main

    path = tmp_path / "scaled_lm.py"
    path.write_text(SCALED_LM)
    argv = ["rules", "--model", f"{path}:make", "--width", "128", "--base-width", "32"]
    with pytest.warns(UserWarning, match=r"head\.weight: mup's output multiplier"):
        assert main([*argv, "--param", "mup"]) == 0
    out = capsys.readouterr().out
    assert "the model scales by width itself" in out
    assert "head (input): x0.1768 -> x0.08839, ~ width^-0.50" in out
    assert "warning: head.weight: mup's output multiplier" in out
