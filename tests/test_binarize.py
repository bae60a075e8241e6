"""Tests for torchbop.binarize: converting real models (six shapes), selectors, rules, errors, state dicts, training."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchbop
from torchbop.nn import BinaryConv1d, BinaryConv2d, BinaryLinear, binarize, named_binary_layers, split_binary_params
from torchbop.quantizers import ApproxSign, SteSign, sign


def is_binary(t):
    return bool(((t == 1) | (t == -1)).all())


# ---------------------------------------------------------------------------------------------------------------------
# Six model shapes


def nested_sequential():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(
            nn.Conv2d(8, 8, 3, padding="same", bias=False),
            nn.BatchNorm2d(8),
            nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12)),
        ),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(48, 16),
        nn.Linear(16, 5),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # the downsampling shortcut: a strided 1x1 convolution
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def depthwise_grouped():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.BatchNorm2d(16),  # depthwise
        nn.Conv2d(16, 16, 1),  # pointwise
        nn.Conv2d(16, 32, 3, padding="same", dilation=2, groups=4, bias=False),
        nn.BatchNorm2d(32),  # grouped
        nn.Conv2d(32, 32, 3, stride=2, padding=1, padding_mode="reflect", groups=2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def conv1d_net():
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2),
        nn.BatchNorm1d(8),
        nn.Conv1d(8, 8, 3, padding="same", dilation=2, groups=2),
        nn.BatchNorm1d(8),
        nn.Conv1d(8, 16, 3, stride=2),
        nn.BatchNorm1d(16),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def mlp_head():
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 32),
        nn.BatchNorm1d(32),
        nn.Linear(32, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.Linear(32, 3),
    )


class Reordered(nn.Module):
    """Module order (``__init__``): head, stem, body1, body2. Data order (``forward``): stem, body1, body2, head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body1 = nn.Conv2d(8, 8, 3, padding=1)
        self.body2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.head(self.body2(self.body1(self.stem(x))).mean((2, 3)))


MODELS = {
    "nested_sequential": (nested_sequential, (2, 3, 8, 8)),
    "resnet": (TinyResNet, (2, 3, 8, 8)),
    "depthwise_grouped": (depthwise_grouped, (2, 3, 8, 8)),
    "conv1d": (conv1d_net, (2, 2, 20)),
    "mlp_head": (mlp_head, (4, 3, 4)),
    "reordered": (Reordered, (2, 3, 6, 6)),
}


def build(name, seed=0):
    torch.manual_seed(seed)
    make, shape = MODELS[name]
    return make(), torch.randn(*shape)


def weight_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def data_order(model, x):
    calls = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: calls.append(n)) for n, m in weight_layers(model)]
    model.eval()
    model(x)
    for h in handles:
        h.remove()
    return calls


# ---------------------------------------------------------------------------------------------------------------------


class TestConvertsModelShapes:
    @pytest.mark.parametrize("name", list(MODELS))
    @pytest.mark.parametrize("use_example", [False, True])
    def test_every_middle_layer_becomes_its_binary_twin(self, name, use_example):
        src, x = build(name)
        with torch.no_grad():  # a zero weight must become +1
            weight_layers(src)[1][1].weight.view(-1)[0] = 0.0
        bnn = binarize(src, example_input=x if use_example else None)
        order = data_order(copy.deepcopy(src), x) if use_example else [n for n, _ in weight_layers(src)]
        first, last = order[0], order[-1]
        src_layers, new_modules = dict(weight_layers(src)), dict(bnn.named_modules())
        twins = {nn.Conv1d: BinaryConv1d, nn.Conv2d: BinaryConv2d, nn.Linear: BinaryLinear}
        for lname, old in src_layers.items():
            new = new_modules[lname]
            if lname in (first, last):
                assert type(new) is type(old) and torch.equal(new.weight, old.weight), lname
                continue
            assert type(new) is twins[type(old)] and new.mode == "bop" and isinstance(new.input_quantizer, SteSign)
            assert torch.equal(new.weight, sign(old.weight)) and is_binary(new.weight), lname
            assert (new.bias is None) == (old.bias is None) and (old.bias is None or torch.equal(new.bias, old.bias))
            # the same geometry: the binary layer on x is the source layer with sign(W) on sign(x)
            ref = copy.deepcopy(old)
            with torch.no_grad():
                ref.weight.copy_(sign(old.weight))
            probe = torch.randn(2, old.weight.shape[1] * (getattr(old, "groups", 1)), *([9] * (old.weight.dim() - 2)))
            torch.testing.assert_close(new(probe), ref(sign(probe)))
        assert dict(weight_layers(src))[weight_layers(src)[1][0]].weight.view(-1)[0] == 0.0  # source untouched
        assert not list(named_binary_layers(src))
        src.eval(), bnn.eval()
        assert bnn(x).shape == src(x).shape

    def test_module_order_and_data_order_pick_different_ends(self):
        src, x = build("reordered")
        by_module = binarize(src)  # first = head, last = body2 (module order)
        by_data = binarize(src, example_input=x)  # first = stem, last = head (data order)
        assert [n for n, _ in named_binary_layers(by_module)] == ["stem", "body1"]
        assert [n for n, _ in named_binary_layers(by_data)] == ["body1", "body2"]

    def test_example_input_leaves_batch_norm_statistics_and_training_flags_alone(self):
        src, x = build("resnet")
        src.train()
        src.layer1[0].bn1.eval()
        before = copy.deepcopy(src.state_dict())
        bnn = binarize(src, example_input=(x,), inplace=True)
        assert bnn is src and bnn.training and not bnn.layer1[0].bn1.training and bnn.layer2[0].bn1.training
        after = bnn.state_dict()
        for key, value in before.items():
            if "running" in key or "num_batches" in key:
                assert torch.equal(after[key], value), key

    def test_shared_layer_is_replaced_everywhere(self):
        shared = nn.Linear(6, 6)
        model = nn.Sequential(nn.Linear(4, 6), shared, nn.ReLU(), shared, nn.Linear(6, 2))
        bnn = binarize(model)
        assert isinstance(bnn[1], BinaryLinear) and bnn[1] is bnn[3]

    def test_whole_model_is_one_layer(self):
        layer = nn.Linear(4, 3)
        with torch.no_grad():
            layer.weight[0, 0] = 0.0
            layer.weight[0, 1] = -0.0
        new = binarize(layer, keep_first=False, keep_last=False)
        assert isinstance(new, BinaryLinear) and torch.equal(new.weight, sign(layer.weight))
        assert new.weight[0, 0] == 1.0 and new.weight[0, 1] == 1.0  # sign(0) = +1, also for -0.0


class TestSettings:
    def test_latent_mode_keeps_the_real_weights_unclipped(self):
        src, _ = build("nested_sequential")
        with torch.no_grad():
            src[3][0].weight.mul_(10.0)  # some entries beyond 1
        bnn = binarize(src, mode="latent")
        assert bnn[3][0].mode == "latent" and torch.equal(bnn[3][0].weight, src[3][0].weight)
        assert bnn[3][0].weight.abs().max() > 1  # not clipped

    @pytest.mark.parametrize("scale", ["fixed", "learnable"])
    def test_scale_starts_at_the_source_per_channel_mean_abs(self, scale):
        src, _ = build("depthwise_grouped")
        bnn = binarize(src, scale=scale)
        for i in (2, 4, 5):
            expected = src[i].weight.detach().abs().mean(dim=(1, 2, 3))
            assert bnn[i].scale == scale and torch.equal(bnn[i].output_scale().detach(), expected)
        assert isinstance(bnn[2].weight_scale, nn.Parameter) == (scale == "learnable")

    def test_mean_abs_in_latent_mode_and_refused_in_bop_mode_naming_the_layer(self):
        src, _ = build("mlp_head")
        assert binarize(src, mode="latent", scale="mean_abs")[3].scale == "mean_abs"
        with pytest.raises(ValueError, match=r"cannot convert '3' \(Linear\).*'mean_abs' in mode='bop'"):
            binarize(src, scale="mean_abs")

    def test_pad_value_goes_to_the_convolutions_that_pad_with_zeros(self):
        src, x = build("depthwise_grouped")
        bnn = binarize(src, pad_value=-1.0)
        assert bnn[2].pad_value == -1.0 and bnn[5].pad_value == -1.0
        assert bnn[4].pad_value == 0.0  # 1x1 conv: no padding
        assert bnn[7].pad_value == 0.0  # reflect padding
        bnn.eval()
        assert bnn(x).shape == (2, 10)

    def test_input_quantizer_instance_is_copied_per_layer_and_factories_are_called(self):
        src, _ = build("mlp_head")
        q = ApproxSign()
        bnn = binarize(src, input_quantizer=q, keep_last=False)
        assert isinstance(bnn[3].input_quantizer, ApproxSign) and bnn[3].input_quantizer is not q
        assert bnn[3].input_quantizer is not bnn[5].input_quantizer
        assert isinstance(binarize(src, input_quantizer=lambda: SteSign(clip_value=1.3))[3].input_quantizer, SteSign)
        assert binarize(src, input_quantizer=None)[3].input_quantizer is None

    def test_keep_first_and_keep_last_false(self):
        src, _ = build("nested_sequential")
        bnn = binarize(src, keep_first=False, keep_last=False)
        assert [n for n, _ in named_binary_layers(bnn)] == ["0", "3.0", "3.2.0", "6", "7"]

    def test_deep_copy_unless_inplace(self):
        src, _ = build("mlp_head")
        bnn = binarize(src)
        assert bnn is not src and type(src[3]) is nn.Linear
        assert binarize(src, inplace=True) is src and isinstance(src[3], BinaryLinear)

    def test_verbose_prints_the_table_or_hands_it_over(self, capsys):
        src, _ = build("resnet")
        binarize(src, verbose=True)
        out = capsys.readouterr().out
        row = r"\nlayer2\.0\.shortcut\.0 +Conv2d +BinaryConv2d +\(16, 8, 1, 1\) +128 +bop +- +SteSign\n"
        assert re.search(row, out)
        assert "kept real: conv1 (Conv2d: the first layer, keep_first=True)" in out
        assert "kept real: fc (Linear: the last layer, keep_last=True)" in out
        got = []
        binarize(src, verbose=got.append)
        assert len(got) == 1 and got[0].startswith("binarize: 7 layer(s) converted, 9,344 binary parameters")
        binarize(src)
        assert capsys.readouterr().out == ""


class TestSelectors:
    def names(self, model):
        return [n for n, _ in named_binary_layers(model)]

    def test_every_selector_kind(self):
        src, _ = build("resnet")
        assert self.names(binarize(src, "layer1.0.conv2")) == ["layer1.0.conv2"]
        assert self.names(binarize(src, "layer2.*.conv1")) == ["layer2.0.conv1", "layer2.1.conv1"]
        assert self.names(binarize(src, re.compile(r"layer\d\.0\.shortcut\.\d"))) == ["layer2.0.shortcut.0"]
        assert self.names(binarize(src, nn.Conv2d)) == [n for n, _ in weight_layers(src)][1:-1]
        assert self.names(binarize(src, ["layer1.0.conv2", re.compile(r".*shortcut.*")])) == [
            "layer1.0.conv2",
            "layer2.0.shortcut.0",
        ]
        assert self.names(binarize(src, nn.Linear, keep_last=False)) == ["fc"]

    def test_patterns_skip_the_kept_ends_and_exact_names_of_them_are_errors(self):
        src, _ = build("resnet")
        assert "conv1" not in self.names(binarize(src, "*conv1"))
        with pytest.raises(ValueError, match=r"'conv1' is the first layer.*keep_first=False"):
            binarize(src, "conv1")
        with pytest.raises(ValueError, match=r"'fc' is the last layer.*keep_last=False"):
            binarize(src, "fc")
        assert self.names(binarize(src, "conv1", keep_first=False)) == ["conv1"]

    def test_rules_override_in_order(self):
        src, _ = build("resnet")
        bnn = binarize(
            src,
            rules=[
                ("layer2.*", {"scale": "fixed"}),
                (re.compile(r".*shortcut.*"), {"mode": "latent", "scale": None}),
                (nn.Conv2d, {"pad_value": 1.0}),
                ("layer2.1.conv2", {"input_quantizer": None, "scale": "learnable"}),
            ],
        )
        assert bnn.layer1[0].conv1.scale is None and bnn.layer1[0].conv1.pad_value == 1.0
        assert bnn.layer2[0].conv1.scale == "fixed"
        short = bnn.layer2[0].shortcut[0]
        assert short.mode == "latent" and short.scale is None and short.pad_value == 0.0  # 1x1: nothing to pad
        last = bnn.layer2[1].conv2
        assert last.scale == "learnable" and last.input_quantizer is None and last.mode == "bop"
        as_dict = binarize(src, rules={"layer2.*": {"scale": "fixed"}, "layer2.1.*": {"scale": None}})
        assert as_dict.layer2[0].conv2.scale == "fixed" and as_dict.layer2[1].conv2.scale is None

    def test_rules_configure_but_do_not_select(self):
        src, _ = build("resnet")
        bnn = binarize(src, "layer1.*", rules={"layer2.0.conv1": {"mode": "latent"}})
        assert self.names(bnn) == ["layer1.0.conv1", "layer1.0.conv2"]

    def test_unsupported_types_are_skipped_by_default_and_reported(self):
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.Conv3d(4, 4, 1), nn.Conv2d(4, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 4, 1)
        )
        got = []
        bnn = binarize(model, verbose=got.append)
        assert self.names(bnn) == ["2"] and isinstance(bnn[1], nn.Conv3d)
        assert "kept real: 1 (Conv3d: a type binarize does not convert)" in got[0]
        assert "kept real: 3 (ConvTranspose2d: a type binarize does not convert)" in got[0]


BAD_SELECTIONS = [
    # (model, args, kwargs, regex)
    ("resnet", ("layer9.*",), {}, r"layers selector 'layer9\.\*' matches no layer of TinyResNet \(convertible"),
    ("resnet", ("nope",), {}, r"'nope' matches no layer"),
    ("resnet", (re.compile("x+"),), {}, r"re\.compile\('x\+'\) matches no layer"),
    ("resnet", (nn.Conv1d,), {}, r"Conv1d matches no layer"),
    ("resnet", ("layer1.0.bn1",), {}, r"'layer1\.0\.bn1' is a BatchNorm2d, not a Conv1d, Conv2d or Linear layer"),
    ("resnet", (), {"rules": {"layer7": {"scale": "fixed"}}}, r"rules\[0\] selector 'layer7' matches no layer"),
    ("conv3d", (nn.Conv3d,), {}, r"reaches '1', a Conv3d, which binarize cannot convert"),
    ("conv3d", ("1",), {}, r"reaches '1', a Conv3d"),
    ("conv3d", ("*",), {}, r"reaches '1', a Conv3d"),
    ("conv3d", ("3",), {}, r"reaches '3', a ConvTranspose2d"),
    ("nothing", (), {}, r"Sequential has no Conv1d, Conv2d or Linear layer to convert"),
    ("two_layers", (), {}, r"nothing to convert in Sequential: 2 kept real as first/last layer"),
    ("resnet", ([],), {}, r"layers is empty"),
    ("resnet", (), {"mode": "xnor"}, r"invalid mode 'xnor'"),
    ("resnet", (), {"scale": "l2"}, r"invalid scale 'l2'"),
    ("resnet", (), {"rules": {"fc": {"sclae": "fixed"}}}, r"unknown setting\(s\) \['sclae'\]"),
]


def bad_model(name):
    if name == "conv3d":
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.Conv3d(4, 4, 1), nn.Conv2d(4, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 4, 1)
        )
    if name == "nothing":
        return nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))
    if name == "two_layers":
        return nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    return build(name)[0]


BAD_TYPES = [
    (dict(model="resnet"), "model must be an nn.Module, got str"),
    (dict(layers=3), "layers must be a layer name or glob"),
    (dict(layers=[nn.Conv2d, 3.5]), r"layers\[1\] must be a layer name"),
    (dict(rules=5), "rules must be a dict"),
    (dict(rules=["layer1.*"]), r"rules\[0\] must be a \(selector, settings\) pair"),
    (dict(rules={"layer1.*": "latent"}), r"rules\[0\] \('layer1.\*'\) must be a dict of settings"),
    (dict(rules={1: {}}), r"the selector of rules\[0\] must be"),
    (dict(keep_first=1), "keep_first must be a bool, got int"),
    (dict(keep_last="no"), "keep_last must be a bool"),
    (dict(inplace=None), "inplace must be a bool"),
    (dict(verbose="yes"), "verbose must be a bool or a callable"),
    (dict(example_input=[[1.0]]), None),  # a list is a tuple of positional arguments: fails in forward, not here
    (dict(example_input={"x": 1}), "example_input must be a Tensor"),
    (dict(input_quantizer="ste"), "input_quantizer in the keyword arguments must be an nn.Module"),
    (dict(pad_value="-1"), "pad_value in the keyword arguments must be a number"),
]


class TestErrors:
    @pytest.mark.parametrize("model, args, kwargs, regex", BAD_SELECTIONS)
    def test_value_errors(self, model, args, kwargs, regex):
        src = bad_model(model)
        before = copy.deepcopy(src.state_dict())
        with pytest.raises(ValueError, match=regex):
            binarize(src, *args, inplace=True, **kwargs)
        assert not list(named_binary_layers(src)) and src.state_dict().keys() == before.keys()

    @pytest.mark.parametrize("kwargs, regex", [b for b in BAD_TYPES if b[1] is not None])
    def test_type_errors_name_the_argument(self, kwargs, regex):
        kwargs = dict(kwargs)
        model = kwargs.pop("model", None) or build("resnet")[0]
        with pytest.raises(TypeError, match=regex):
            binarize(model, **kwargs)

    def test_converting_twice(self):
        src, _ = build("resnet")
        bnn = binarize(src)
        with pytest.raises(ValueError, match=r"nothing to convert in TinyResNet: 7 layer\(s\) already binary"):
            binarize(bnn)
        with pytest.raises(ValueError, match=r"'layer1\.0\.conv1' is already a binary layer"):
            binarize(bnn, "layer1.0.conv1")
        with pytest.raises(ValueError, match=r"'layer1\.\*' matches only binary layers"):
            binarize(bnn, "layer1.*")
        again = binarize(bnn, keep_first=False)  # converts what the first call left real: the first layer
        assert isinstance(again.conv1, BinaryConv2d) and type(again.fc) is nn.Linear

    def test_example_input_that_reaches_no_layer(self):
        model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
        model.forward = lambda x: x  # type: ignore[method-assign]
        with pytest.raises(ValueError, match="example_input called none of the model's weight layers"):
            binarize(model, example_input=torch.randn(2, 3))


class TestStateDictAndTraining:
    @pytest.mark.parametrize("name", ["resnet", "depthwise_grouped", "conv1d"])
    def test_state_dict_holds_exact_binary_weights_and_loads_into_a_fresh_conversion(self, name):
        src, x = build(name, seed=1)
        bnn = binarize(src, scale="fixed", pad_value=-1.0)
        state = bnn.state_dict()
        binary_keys = [f"{n}.weight" for n, _ in named_binary_layers(bnn)]
        assert binary_keys and all(is_binary(state[k]) for k in binary_keys)
        fresh = binarize(build(name, seed=2)[0], scale="fixed", pad_value=-1.0)  # same architecture, other weights
        assert not torch.equal(fresh.state_dict()[binary_keys[0]], state[binary_keys[0]])
        fresh.load_state_dict(state)  # strict: same keys, same shapes
        bnn.eval(), fresh.eval()
        assert torch.equal(fresh(x), bnn(x))

    def test_one_training_step_with_the_routed_optimizer(self):
        src, x = build("resnet")
        bnn = binarize(src, scale="learnable")
        opt = torchbop.optim.bop_optimizer(
            bnn, binary_kwargs=dict(gamma=1.0, threshold=0.0), other_kwargs=dict(lr=0.01)
        )
        binary, other = split_binary_params(bnn)
        before = [w.detach().clone() for w in binary]
        scales = [m.weight_scale.detach().clone() for _, m in named_binary_layers(bnn)]
        y = torch.randint(0, 10, (x.shape[0],))
        F.cross_entropy(bnn(x), y).backward()
        opt.step()
        assert all(is_binary(w) for w in binary)
        flips = sum(int((w != b).sum()) for w, b in zip(binary, before))
        assert flips > 0
        assert any(not torch.equal(m.weight_scale, s) for (_, m), s in zip(named_binary_layers(bnn), scales))
