"""Issue 10's contracts: one validated bottleneck spec, method-faithful defaults, each side
holding only what it reads, lossy codecs in split(x), and the bottleneck crashes fixed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import bottlenecks
import splitter
from bottlenecks.spec import KINDS, BottleneckSpec
from splitter.cli import main
from splitter.deploy import payload
from splitter.errors import BottleneckError, InputError, InputShapeError


@pytest.fixture(scope="module")
def r50():
    return splitter.trace(timm.create_model("resnet50").eval())


@pytest.fixture(scope="module")
def r18_32():
    return splitter.trace(timm.create_model("resnet18").eval(), (3, 32, 32))


# -- options: one validation for Python, YAML and the CLI ---------------------------------------

@pytest.mark.parametrize("opts, words", [
    ({"chanels": 12}, ["unknown option 'chanels'", "did you mean 'channels'?"]),
    ({"channels": 12.7}, ["channels=12.7", "fractional part"]),
    ({"channels": "twelve"}, ["channels='twelve'", "valid integer"]),
    ({"channels": 0}, ["channels=0", "greater than or equal to 1"]),
])
def test_bad_options_raise_before_tracing(opts, words, monkeypatch):
    import splitter.compile.split as split_module

    monkeypatch.setattr(split_module, "trace", lambda *a, **k: pytest.fail("traced anyway"))
    with pytest.raises(BottleneckError) as e:
        splitter.split("resnet50", at="layer1", bottleneck="crbq", **opts)
    for w in words:
        assert w in str(e.value)


def test_options_are_converted_not_truncated(r18_32):
    s = splitter.split(r18_32, at="layer1", bottleneck="crbq:channels=12")
    assert s.bottleneck.channels == 12 and s.spec.options == {"channels": 12}
    assert s.options == {"channels": 12, "layout": "nchw"}  # what the manifest writes


def test_cli_option_typo_is_an_error(capsys):
    rc = main(["split", "resnet18", "--input-size", "3,32,32", "--at", "layer1",
               "--bottleneck", "crbq", "--option", "chanels=4"])
    assert rc == 2
    assert "did you mean 'channels'?" in capsys.readouterr().err


def test_unknown_kind_and_mode():
    with pytest.raises(BottleneckError, match="closest: \\['crbq'"):
        BottleneckSpec(kind="crbx")
    with pytest.raises(BottleneckError, match="cannot replace the head"):
        BottleneckSpec(kind="crbq", mode="replace")


def test_kinds_declared_once():
    """Wire ids and stream counts come from the kinds' declaration, and the classes agree."""
    bottlenecks.load_all()
    assert payload.KIND_IDS == {k: v.wire_id for k, v in KINDS.items()}
    assert payload.STREAMS == {k: v.streams for k, v in KINDS.items()}
    assert len(set(payload.KIND_IDS.values())) == len(KINDS)
    for name, info in KINDS.items():
        assert bottlenecks.REGISTRY[name].n_streams == info.streams


def test_constructors_take_no_stray_options():
    bottlenecks.load_all()
    with pytest.raises(BottleneckError, match="unknown option 'qualty'"):
        bottlenecks.create("jpeg", in_shape=(8, 4, 4), qualty=50)
    with pytest.raises(TypeError):  # the class itself has no catch-all either
        bottlenecks.REGISTRY["crbq"]((8, 4, 4), "nchw", None, chanels=2)


# -- defaults that follow the method --------------------------------------------------------------

def test_replace_mode_is_the_entropic_student(r50):
    s = splitter.split(r50, at="layer1", bottleneck="entropy", mode="replace")
    assert s.bottleneck.channels == 24
    assert s.costs.encoder_params == 138_672
    head_params = sum(p.numel() for p in s.head.parameters())
    assert head_params == s.costs.encoder_params  # the head holds what it reads, no decoder
    tail_names = {n for n, _ in s.tail.named_parameters()}
    assert not any(".encoder." in n for n in tail_names)
    assert any(".decoder." in n for n in tail_names)


def test_insert_mode_head_holds_no_decoder(r18_32):
    s = splitter.split(r18_32, at="layer1", bottleneck="entropy", channels=8)
    bn = {id(p) for p in s.bottleneck.decoder.parameters()}
    assert not bn & {id(p) for p in s.head.parameters()}
    enc = sum(p.numel() for p in s.bottleneck.encoder.parameters())
    plain = splitter.split(r18_32, at="layer1")
    assert sum(p.numel() for p in s.head.parameters()) == \
        sum(p.numel() for p in plain.head.parameters()) + enc


# -- lossy codecs: split(x) is what the deployed pair computes ------------------------------------

@pytest.mark.parametrize("kind", ["jpeg", "webp"])
def test_lossy_split_forward_runs_the_codec(r18_32, kind):
    s = splitter.split(r18_32, at="layer2", bottleneck=kind, quality=20)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(s(x), s.decode(s.encode(x)))
    assert not torch.equal(s(x), s.tail(s.head(x)))  # the codec does change something


# -- crashes that were raw tracebacks ----------------------------------------------------------------

def test_pit_stage_cut_takes_the_crossing_tensor():
    m = timm.create_model("pit_ti_224").eval()
    s = splitter.split(m, at="transformers.2", bottleneck="entropy")
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(s(x), s.decode(s.encode(x)))


class _Guarded(nn.Module):
    """A shape test in forward: FX cannot trace it, torch.export keeps a guard."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        if x.shape[-1] > 32:
            x = x * 1.0
        return self.fc(self.down(self.stem(x)).mean((2, 3)))


def test_replace_mode_on_an_export_traced_graph():
    s = splitter.split(_Guarded().eval(), "down", bottleneck="entropy", mode="replace",
                       input_shape=(3, 64, 64))
    assert s.graph.frontend == "export"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(s(x), s.decode(s.encode(x)))


@pytest.mark.parametrize("kind", ["crbq", "entropy"])
def test_encode_checks_its_input(r18_32, kind):
    s = splitter.split(r18_32, at="layer1", bottleneck=kind)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(InputShapeError, match="32, 32"):
        s.encode(torch.randn(2, 3, 40, 40))
    with pytest.raises(InputError, match="uint8.*255"):
        s.encode((x.abs() * 50).to(torch.uint8))
    with pytest.raises(InputError, match="float16.*x.float"):
        s.encode(x.half())
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="1 non-finite"):
        s.encode(bad)
    assert s.decode(s.encode(x)).shape == (2, 1000)


# -- layout: every module imports alone, imports point one way ------------------------------------

def _modules() -> list[str]:
    import pkgutil

    import passes
    import targets

    out = []
    for pkg in (splitter, passes, bottlenecks, targets):
        out.append(pkg.__name__)
        out += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                if not m.name.endswith("__main__")]
    return out


_IMPORT_ALONE = """
import importlib, multiprocessing as mp, sys, traceback
# third-party libraries load once in this parent; each of our modules is then imported
# alone in its own forked child, which starts with none of our modules loaded
for lib in ("torch", "torch.fx", "torchvision", "timm", "compressai", "onnx", "onnxruntime",
            "numpy", "pydantic", "PIL.Image", "safetensors.torch", "yaml", "networkx"):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m.split(".")[0] in ("splitter", "passes", "bottlenecks", "targets")]

def one(name, q):
    try:
        importlib.import_module(name)
        q.put((name, None))
    except BaseException:
        q.put((name, traceback.format_exc().strip().splitlines()[-1]))

ctx = mp.get_context("fork")
q = ctx.Queue()
bad = []
for name in sys.argv[1:]:
    p = ctx.Process(target=one, args=(name, q))
    p.start()
    p.join()
    got, err = q.get(timeout=60)
    if err or p.exitcode:
        bad.append((got, err, p.exitcode))
print(bad)
sys.exit(1 if bad else 0)
"""


def test_every_module_imports_alone():
    """Every module of splitter, passes, bottlenecks and targets, each imported first in an
    interpreter holding none of our modules (a fork of one that loaded only the third-party
    libraries), so no import order can hide a cycle."""
    mods = _modules()
    assert len(mods) > 40
    r = subprocess.run([sys.executable, "-c", _IMPORT_ALONE, *mods], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


# lower layers never import higher ones. Leaves anyone may use: errors, text tables, the
# wire format (payload framing, the torch-free coder) and the kinds' declaration; a leaf
# imports only other leaves.
_LAYERS = ["compile", "train", "deploy", "explore", "cli"]
_LEAVES = {"splitter.errors", "splitter._text", "splitter.tensors", "splitter.deploy.payload",
           "splitter.deploy.coder", "splitter.deploy.preprocess",
           "bottlenecks.spec", "bottlenecks.wire", "splitter.deploy", "splitter", "bottlenecks"}


def _is_leaf(module: str) -> bool:
    return any(module == leaf or module.startswith(leaf + ".") for leaf in _LEAVES
               if leaf not in ("splitter", "splitter.deploy", "bottlenecks"))


def _imports(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] in ("passes", "bottlenecks"):
        return -1
    if parts[0] == "targets":
        return 1.5  # emitters: under deploy (export runs them), over compile (they read Splits)
    if parts[0] == "splitter" and len(parts) > 1 and parts[1] in _LAYERS:
        return _LAYERS.index(parts[1])
    return None


def test_imports_point_one_way():
    from pathlib import Path

    root = Path(splitter.__file__).parent.parent
    wrong = []
    for pkg in ("splitter", "passes", "bottlenecks", "targets"):
        for path in (root / pkg).rglob("*.py"):
            mod = ".".join(path.relative_to(root).with_suffix("").parts)
            ours = [i for i in _imports(path) if i.split(".")[0] in
                    ("splitter", "passes", "bottlenecks", "targets")]
            if _is_leaf(mod):
                wrong += [f"leaf {mod} imports {i}" for i in ours
                          if not _is_leaf(i) and i not in _LEAVES]
                continue
            me = _layer(mod)
            if me is None:
                continue
            for imp in ours:
                if imp in _LEAVES or _is_leaf(imp):
                    continue
                other = _layer(imp)
                if other is not None and other > me:
                    wrong.append(f"{mod} imports {imp}")
    assert not wrong, "\n".join(sorted(wrong))


def test_light_imports_stay_light():
    code = ("import sys, splitter, splitter.errors, splitter.deploy.payload, bottlenecks.spec; "
            "heavy = [m for m in ('torch', 'torch.fx', 'compressai', 'timm') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_public_names_resolve():
    for name in splitter.__all__:
        assert getattr(splitter, name) is not None, name
    assert splitter.BottleneckSpec is BottleneckSpec


def test_sweep_bottleneck_typo_fails_before_tracing(capsys):
    rc = main(["sweep", "resnet18", "--input-size", "3,32,32", "--at", "layer1",
               "--bottleneck", "crbq:chanels=4"])
    assert rc == 2
    assert "did you mean 'channels'?" in capsys.readouterr().err


def test_manifest_records_the_one_spec(r18_32, tmp_path):
    from targets.tables import BuiltBottleneck, spec_of

    s = splitter.split(r18_32, at="layer2", bottleneck="entropy", mode="replace", channels=6)
    built = spec_of(s)
    assert isinstance(built, BuiltBottleneck) and isinstance(built, BottleneckSpec)
    assert (built.kind, built.mode, built.options) == ("entropy", "replace", {"channels": 6})
    again = BuiltBottleneck.model_validate_json(built.model_dump_json())
    assert again == built
    assert bottlenecks.create(again.kind, **again.create_args()).channels == 6


def test_commands_print_no_warnings_of_ours():
    """compressai's import-time torch.jit.script FutureWarning is silenced at its source."""
    r = subprocess.run([sys.executable, "-m", "splitter.cli", "points", "resnet18", "--input-size",
                        "3,32,32", "--stages"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c",
                        "import bottlenecks.entropy, bottlenecks.hyperprior"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_split_prints_no_unmeasured_payload(capsys):
    rc = main(["split", "resnet18", "--input-size", "3,32,32", "--at", "layer1",
               "--bottleneck", "entropy"])
    out = capsys.readouterr().out
    assert rc == 0 and "payload: not measured" in out
    assert "~" not in out and "B per sample" not in out
