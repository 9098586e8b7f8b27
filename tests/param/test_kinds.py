"""Every parameter kind ends correct or refused by name (issue 12's silent failures): a module
under two names, pickled and copied models, custom tensors (fused MoE experts, a ViT class token,
Mamba's A_log), grouped and depthwise convolutions. Small stand-in modules, nothing downloaded."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.models import build_model
from hptransfer.models.hf import set_attention_scale, width_factory
from hptransfer.param.apply import parameterize
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule


class Aliased(nn.Module):
    """One nn.Linear registered as ``mid`` and as ``alias``."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.inp = nn.Linear(8, w)
        self.mid = nn.Linear(w, w)
        self.alias = self.mid
        self.out = nn.Linear(w, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.mid(torch.relu(self.inp(x)))))


def test_a_module_under_two_names_gets_its_multiplier_once() -> None:
    torch.manual_seed(0)
    model = Aliased(64)
    roles = roles_from_factory(Aliased, 64, 16)
    assert roles["alias.weight"].tied_to == "mid.weight"
    p = parameterize(model, roles, make_rule("mfp", "adam"), lr=1e-3)
    mult = p.table["mid.weight"].multiplier
    assert mult == 0.5  # mfp hidden: m^-1/2 at m = 4
    assert len(model.mid._forward_pre_hooks) == 1
    h = torch.randn(5, 64)
    expected = h @ (mult * model.mid.weight).T + model.mid.bias
    torch.testing.assert_close(model.mid(h), expected, rtol=1e-6, atol=1e-6)


def nanodo(width: int) -> nn.Module:
    return build_model("nanodo", width=width, depth=1, seq_len=32, head_dim=16)


def _parameterized(seed: int) -> tuple[nn.Module, object]:
    torch.manual_seed(seed)
    model = nanodo(128)
    roles = roles_from_factory(nanodo, 128, 32)
    rule = make_rule("mup", "adam", "full")
    gen = torch.Generator().manual_seed(seed)
    return model, parameterize(model, roles, rule, lr=1e-2, generator=gen)


@torch.no_grad()
def test_multipliers_survive_torch_save_deepcopy_and_a_state_dict() -> None:
    model, par = _parameterized(0)
    assert {par.table[n].multiplier for n in ("tok_embed.weight", "head.weight")} == {2.0, 0.5}
    x = torch.randint(0, 256, (2, 16))
    want = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert torch.equal(loaded(x), want)
    assert torch.equal(copy.deepcopy(model)(x), want)
    fresh, _ = _parameterized(1)
    assert not torch.equal(fresh(x), want)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), want)
    par.remove()  # the multipliers were in effect: without them the outputs change
    assert not torch.equal(model(x), want)


class Experts(nn.Module):
    """Fused MoE experts, transformers 5 style: (experts, out, in) tensors on a custom module,
    each token sent to one expert whose matrices are sliced out of the fused tensors."""

    def __init__(self, w: int, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Parameter(torch.randn(experts, w) * 0.02)
        self.gate_up = nn.Parameter(torch.randn(experts, 4 * w, w) * 0.02)
        self.down = nn.Parameter(torch.randn(experts, w, 2 * w) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = torch.nn.functional.linear(x, self.router).argmax(-1)
        out = torch.zeros_like(x)
        for e in choice.unique():
            rows = choice == e
            gate, up = torch.nn.functional.linear(x[rows], self.gate_up[e]).chunk(2, dim=-1)
            h = torch.nn.functional.silu(gate) * up
            out[rows] = h @ self.down[e].T
        return out


class MoE(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.inp = nn.Linear(8, w)
        self.experts = Experts(w)
        self.out = nn.Linear(w, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.experts(self.inp(x)))


def test_fused_experts_get_per_matrix_fans_from_their_use() -> None:
    """Issue 12: fan_in was read as out * in (width_mult 16 at 4x); the trace sees one expert's
    (out, in) matrix contracted over its last dim, and the router as an output layer."""
    roles = roles_from_factory(MoE, 64, 16, example=torch.randn(6, 8))
    got = {e.name: (e.role, e.fan_in, e.fan_out, e.width_mult) for e in roles}
    assert got["experts.gate_up"] == ("hidden", 64, 256, 4.0)  # not fan_in 256 * 64, m 16
    assert got["experts.down"] == ("hidden", 128, 64, 4.0)
    assert got["experts.router"] == ("output", 64, 4, 4.0)
    assert roles["experts.gate_up"].evidence == "linear in=dim2 out=dim1"
    assert roles["experts.down"].evidence == "matmul in=dim2 out=dim1"
    p = parameterize(MoE(64), roles, make_rule("mup", "adam", "full"), lr=1e-3, form="folded")
    assert p.table["experts.gate_up"].init_std == pytest.approx(64**-0.5)  # 1 / sqrt(fan_in)
    assert p.table["experts.down"].lr_factor == pytest.approx(1 / 4)  # hidden, Adam: m^-1


def test_fused_experts_without_a_trace_are_refused_then_read_with_overrides() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^experts.router: .*\(4, 16\) at base width and "
        r'\(4, 64\) at width.*param.overrides, e.g. "\*.router"',
    ):
        roles_from_factory(MoE, 64, 16)
    over = {"experts.router": "output", "experts.*": "hidden"}
    roles = roles_from_factory(MoE, 64, 16, overrides=over)
    got = {n: (roles[n].fan_in, roles[n].fan_out, roles[n].width_mult) for n in roles.entries}
    assert got["experts.gate_up"] == (64, 256, 4.0)  # overridden: matrices in the last two dims
    assert got["experts.down"] == (128, 64, 4.0)
    model = MoE(64)
    rule = make_rule("mup", "adam", "full")
    # mfp's hidden multiplier m^-1/2 on the bare 3-D tensors: their owner's forward reads them
    # scaled (`ScaleParam`), the parameters themselves stay what they were
    plain = copy.deepcopy(model)
    par = parameterize(model, roles, make_rule("mfp", "adam"), lr=1e-3, init=False)
    assert {par.table[n].multiplier for n in ("experts.gate_up", "experts.down")} == {0.5}
    with torch.no_grad():
        plain.experts.gate_up.mul_(0.5)
        plain.experts.down.mul_(0.5)
        plain.out.weight.mul_(0.25)  # mfp's readout: m^-1
    x = torch.randn(2, 8)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-6, atol=1e-7)
    assert isinstance(model.experts.gate_up, nn.Parameter) and not torch.equal(
        model.experts.gate_up, plain.experts.gate_up
    )
    par.remove()
    p = parameterize(model, roles, rule, lr=1e-3, form="folded")
    assert p.table["experts.gate_up"].init_std == pytest.approx(64**-0.5)  # 1 / sqrt(fan_in)
    assert model.experts.gate_up.std().item() == pytest.approx(64**-0.5, rel=0.05)


class PatchEmbed(nn.Module):
    """A ViT's embedding: conv patches, then a class token and position embeddings."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, w, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.full((1, 5, w), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed


def test_vit_tokens_are_vectors_from_their_use() -> None:
    """Issue 12: a class token and a position table (bare parameters) were classed hidden;
    concatenated with and added to activations, they are vectors whose init is kept."""
    roles = roles_from_factory(PatchEmbed, 64, 16, example=torch.randn(2, 3, 8, 8))
    got = {e.name: (e.role, e.fan_in, e.fan_out, e.width_mult, e.evidence) for e in roles}
    assert got["cls_token"] == ("vector", 64, 64, 4.0, "applied to activations (cat)")
    assert got["pos_embed"] == ("vector", 64, 64, 4.0, "applied to activations (add)")
    assert got["proj.weight"][:4] == ("input", 48, 64 * 16, 4.0)
    model = PatchEmbed(64)
    p = parameterize(model, roles, make_rule("mup", "adam", "full"), lr=1e-3)
    for name in ("cls_token", "pos_embed"):
        spec = p.table[name]
        assert (spec.role, spec.init_std, spec.multiplier) == ("vector", None, 1.0)
    assert torch.equal(model.pos_embed, torch.full((1, 5, 64), 0.25))  # constant init kept
    assert torch.equal(model.cls_token, torch.zeros(1, 1, 64))


def test_vit_tokens_without_a_trace_are_refused_then_behave_as_vectors() -> None:
    with pytest.raises(ConfigError, match=r'^cls_token: .*PatchEmbed.cls_token.*"cls_token" ='):
        roles_from_factory(PatchEmbed, 64, 16)
    over = {"cls_token": "vector", "pos_embed": "vector"}
    roles = roles_from_factory(PatchEmbed, 64, 16, overrides=over)
    assert roles["pos_embed"].width_mult == 4.0
    assert roles["proj.weight"].role == "input"
    model = PatchEmbed(64)
    p = parameterize(model, roles, make_rule("mup", "adam", "full"), lr=1e-3)
    assert p.table["cls_token"].init_std is None
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5, 64)


class Mixer(nn.Module):
    """Mamba-like: in_proj, a depthwise causal conv, A_log (channels, state), D, out_proj."""

    def __init__(self, w: int, state: int = 4) -> None:
        super().__init__()
        inner = 2 * w
        self.in_proj = nn.Linear(w, inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, 4, groups=inner, padding=3)
        a = torch.arange(1, state + 1, dtype=torch.float32).repeat(inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, w, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, w)
        h = self.conv1d(self.in_proj(x).transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
        decay = torch.exp(-torch.exp(self.A_log)).mean(-1)
        return self.out_proj(h * decay + self.D * h)


def test_mamba_a_log_and_the_depthwise_conv_are_vectors_from_their_use() -> None:
    """Issue 12: A_log and the depthwise conv were classed input and re-initialized (A moved
    from [-4, -1] to a Gaussian's range); A_log goes through exp, the conv has one kernel per
    channel: both vectors, their init kept."""

    def mamba(w: int) -> nn.Module:  # a width-free input: 8 features in
        return nn.Sequential(nn.Linear(8, w), Mixer(w))

    roles = roles_from_factory(mamba, 64, 16, example=torch.randn(2, 6, 8))
    got = {e.name: (e.role, e.fan_in, e.fan_out, e.width_mult, e.evidence) for e in roles}
    assert got["1.A_log"] == ("vector", 128, 128, 4.0, "exp")
    assert got["1.conv1d.weight"] == ("vector", 4, 4, 4.0, "conv1d in=dim1 out=dim0 groups=128")
    assert got["1.D"][:4] == ("vector", 128, 128, 4.0)
    assert got["1.in_proj.weight"][:4] == ("hidden", 64, 128, 4.0)
    torch.manual_seed(0)
    model = mamba(64)
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    p = parameterize(model, roles, make_rule("mup", "adam", "full"), lr=1e-3)
    for name in ("1.A_log", "1.conv1d.weight", "1.D"):  # kept as the model initialized them
        assert p.table[name].init_std is None and p.table[name].multiplier == 1.0
        assert torch.equal(dict(model.named_parameters())[name], before[name]), name


def test_mamba_a_log_without_a_trace_is_refused() -> None:
    with pytest.raises(ConfigError, match=r'^A_log: .*Mixer.A_log .*"A_log" = "hidden"'):
        roles_from_factory(Mixer, 64, 16)
    roles = roles_from_factory(Mixer, 64, 16, overrides={"A_log": "vector"})
    conv = roles["conv1d.weight"]
    assert (conv.role, conv.fan_in, conv.fan_out, conv.width_mult) == ("vector", 4, 4, 4.0)
    assert roles["A_log"].role == "vector"


class Grouped(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3)
        self.grouped = nn.Conv2d(w, 2 * w, 3, groups=4)
        self.up = nn.ConvTranspose2d(2 * w, w, 2, groups=4)


def test_grouped_convolutions_have_per_group_fans() -> None:
    roles = roles_from_factory(Grouped, 64, 16)
    got = {e.name: (e.role, e.fan_in, e.fan_out, e.width_mult) for e in roles}
    assert got["grouped.weight"] == ("hidden", 64 // 4 * 9, 128 // 4 * 9, 4.0)
    assert got["up.weight"] == ("hidden", 128 // 4 * 4, 64 // 4 * 4, 4.0)
    assert got["stem.weight"] == ("input", 27, 64 * 9, 4.0)


def mixtral(w: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=w,
        intermediate_size=2 * w,
        num_hidden_layers=1,
        num_attention_heads=w // 8,
        num_key_value_heads=w // 16,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=16,
    )
    return transformers.MixtralForCausalLM(config)


def vit(w: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=w,
        num_hidden_layers=1,
        num_attention_heads=w // 8,
        intermediate_size=2 * w,
        image_size=16,
        patch_size=4,
    )
    return transformers.ViTModel(config)


def test_transformers_mixtral_and_vit_are_refused_then_read_with_overrides() -> None:
    with pytest.raises(ConfigError, match=r'^model.layers.0.mlp.gate.weight: .*"\*.gate.weight"'):
        roles_from_factory(mixtral, 64, 32)
    over = {"*.mlp.gate.weight": "output", "*.experts.*": "hidden"}
    roles = roles_from_factory(mixtral, 64, 32, overrides=over)
    experts = roles["model.layers.0.mlp.experts.gate_up_proj"]
    assert (experts.fan_in, experts.fan_out, experts.width_mult) == (64, 256, 2.0)
    router = roles["model.layers.0.mlp.gate.weight"]
    assert (router.fan_in, router.fan_out, router.width_mult) == (64, 4, 2.0)
    with pytest.raises(ConfigError, match=r'^embeddings.cls_token: .*"\*.cls_token" ='):
        roles_from_factory(vit, 64, 32)
    over = {"*.cls_token": "vector", "*.position_embeddings": "vector"}
    roles = roles_from_factory(vit, 64, 32, overrides=over)
    assert roles["embeddings.cls_token"].role == "vector"
    assert roles["embeddings.patch_embeddings.projection.weight"].role == "input"


def test_untie_keeps_the_transformers_config_consistent() -> None:
    pytest.importorskip("transformers")

    def gpt2(w: int) -> nn.Module:
        return build_model("hf_gpt2", width=w, depth=1, vocab_size=64, seq_len=16, head_dim=8)

    roles = roles_from_factory(gpt2, 64, 32, tied="untie")
    model = gpt2(64)
    parameterize(model, roles, make_rule("mup", "adam", "full"), lr=1e-2)
    hf = model.hf
    assert hf.lm_head.weight is not hf.transformer.wte.weight
    assert hf.config.tie_word_embeddings is False
    hf.tie_weights()  # recomputes the ties from the config: must leave the head its own
    assert hf.lm_head.weight is not hf.transformer.wte.weight


def test_set_attention_scale_says_why_it_cannot_act_on_t5() -> None:
    transformers = pytest.importorskip("transformers")

    def t5(w: int) -> object:
        return transformers.T5Config(
            vocab_size=64, d_model=w, d_kv=8, d_ff=2 * w, num_layers=1, num_heads=w // 8
        )

    model = width_factory(t5, model_class=transformers.T5ForConditionalGeneration, wrap=False)(32)
    with pytest.raises(ConfigError, match=r"T5Attention.scaling = 1 has no head_dim .*T5 folds"):
        set_attention_scale(model, "linear")
    with pytest.raises(ConfigError, match="no attention module has a float `scaling`"):
        set_attention_scale(nn.Linear(4, 4), "linear")
