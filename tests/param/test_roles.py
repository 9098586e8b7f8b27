import pytest
import torch
from torch import nn

from hptransfer.models import build_model
from hptransfer.param.roles import infer_roles, roles_from_factory


def nanodo(width):
    return build_model("nanodo", width=width, depth=1, seq_len=32, head_dim=16)


def test_nanodo_roles_table():
    roles = roles_from_factory(nanodo, 128, 32)
    expected = {
        "tok_embed.weight": ("input", 256, 128, 4.0),
        "pos_embed.weight": ("input", 32, 128, 4.0),
        "blocks.0.ln1.weight": ("vector", 128, 128, 4.0),
        "blocks.0.attn.q.weight": ("hidden", 128, 128, 4.0),
        "blocks.0.attn.k.weight": ("hidden", 128, 128, 4.0),
        "blocks.0.attn.v.weight": ("hidden", 128, 128, 4.0),
        "blocks.0.attn.o.weight": ("hidden", 128, 128, 4.0),
        "blocks.0.ln2.weight": ("vector", 128, 128, 4.0),
        "blocks.0.mlp.fc_in.weight": ("hidden", 128, 512, 4.0),
        "blocks.0.mlp.fc_out.weight": ("hidden", 512, 128, 4.0),
        "ln_f.weight": ("vector", 128, 128, 4.0),
        "head.weight": ("output", 128, 256, 4.0),
    }
    got = {e.name: (e.role, e.fan_in, e.fan_out, e.width_mult) for e in roles}
    assert got == expected


def test_at_base_width_growth_is_read_from_a_probe_width():
    roles = roles_from_factory(nanodo, 32, 32)
    assert roles["head.weight"].role == "output"
    assert roles["blocks.0.attn.q.weight"].width_mult == 1.0


def test_biases_are_vectors_and_overrides_win():
    def mlp(w):
        return build_model("mlp", width=w, depth=2, seq_len=32, head_dim=16)

    roles = roles_from_factory(mlp, 64, 32, overrides={"layers.1.*": "fixed"})
    assert roles["layers.0.bias"].role == "vector"
    assert roles["layers.1.weight"].role == "fixed"
    assert roles["layers.1.bias"].role == "fixed"
    with pytest.raises(ValueError, match="role must be one of"):
        roles_from_factory(mlp, 64, 32, overrides={"head.*": "readout"})


class Tied(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.emb = nn.Embedding(50, width)
        self.mid = nn.Linear(width, width)
        self.out = nn.Linear(width, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.mid(self.emb(x)))


def test_tied_weights_are_refused_unless_a_rule_is_chosen():
    with pytest.raises(ValueError, match="tied to tok|tied to emb.weight.*param.tied"):
        roles_from_factory(Tied, 64, 32)
    roles = roles_from_factory(Tied, 64, 32, tied="output")
    assert roles["emb.weight"].role == "output" and roles["out.weight"].role == "output"
    untied = roles_from_factory(Tied, 64, 32, tied="untie")
    assert (untied["emb.weight"].role, untied["out.weight"].role) == ("input", "output")
    assert untied["out.weight"].width_mult == 2.0


class Conv(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3)
        self.c2 = nn.Conv2d(width, width, 3)
        self.fc = nn.Linear(width, 10)


def test_convolutions_use_receptive_fields():
    with torch.device("meta"):
        roles = infer_roles(Conv(64), Conv(16))
    assert roles["c1.weight"].role == "input" and roles["c1.weight"].fan_in == 27
    assert roles["c2.weight"].role == "hidden" and roles["c2.weight"].fan_in == 64 * 9
    assert roles["c2.weight"].width_mult == 4.0
    assert roles["fc.weight"].role == "output" and roles["fc.bias"].role == "fixed"


def test_roles_table_survives_deepcopy_and_save():
    """No metadata lives on tensors: a copied model is looked up by name in the same table."""
    import copy
    import io

    roles = roles_from_factory(nanodo, 64, 32)
    model = copy.deepcopy(nanodo(64))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert set(torch.load(io.BytesIO(buf.getvalue()))) == {e.name for e in roles}


class Custom(nn.Module):
    """Bare parameters used in custom code: through a transpose, an einsum, and a cumsum."""

    def __init__(self, width):
        super().__init__()
        self.inp = nn.Parameter(torch.randn(8, width))
        self.mid = nn.Parameter(torch.randn(width, 2 * width))
        self.mix = nn.Parameter(torch.randn(width, width))
        self.out = nn.Parameter(torch.randn(3, width))

    def forward(self, x):
        if x.sum().item() > 1e9:  # data dependent: not traceable on the meta device
            return x
        h = torch.einsum("bi,io->bo", x, self.inp)
        h = (h @ self.mid)[:, : h.shape[1]]
        h = h @ torch.cumsum(self.mix, 0)
        return h @ self.out.T


def test_roles_come_from_the_traced_use_and_an_unfit_use_is_refused_by_name():
    x = torch.randn(4, 8)
    rng = torch.random.get_rng_state()
    with pytest.raises(ValueError, match=r"^mix: role unknown: .*fits no rule \(used by cumsum\)"):
        roles_from_factory(Custom, 64, 16, example=x)
    roles = roles_from_factory(Custom, 64, 16, example=x, overrides={"mix": "hidden"})
    assert torch.equal(torch.random.get_rng_state(), rng)  # traced on the CPU, RNG forked
    got = {e.name: (e.role, e.fan_in, e.fan_out, e.width_mult, e.evidence) for e in roles}
    assert got["inp"] == ("input", 8, 64, 4.0, "einsum in=dim0 out=dim1")
    assert got["mid"] == ("hidden", 64, 128, 4.0, "matmul in=dim0 out=dim1")
    assert got["out"] == ("output", 64, 3, 4.0, "matmul in=dim1 out=dim0")
    assert got["mix"][:2] == ("hidden", 64)
    assert got["mix"][4] == "override hidden; used by cumsum"
    # nothing stays installed: no mode, no global hook
    assert not torch._C._is_torch_function_mode_enabled()
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks


def test_traced_roles_agree_with_storage_roles_on_the_built_in_models():
    """The models the project builds: the same table from use as from storage order."""
    ids = torch.zeros(1, 16, dtype=torch.long)
    for name in ("nanodo", "mlp", "llama", "hf_gpt2", "hf_llama"):
        if name.startswith("hf_"):
            pytest.importorskip("transformers")

        def make(w, name=name):
            return build_model(name, width=w, depth=1, seq_len=16, head_dim=16, vocab_size=64)

        tied = "untie" if name == "hf_gpt2" else "error"
        stored = roles_from_factory(make, 64, 32, tied=tied)
        traced = roles_from_factory(make, 64, 32, tied=tied, example=ids)
        key = ("role", "fan_in", "fan_out", "n", "n_base", "tied_to")
        assert [[getattr(e, k) for k in key] for e in traced] == [
            [getattr(e, k) for k in key] for e in stored
        ], name
        if name == "nanodo":
            assert traced["head.weight"].evidence == "linear in=dim1 out=dim0"
            assert stored["head.weight"].evidence == "Linear storage (out, in)"
