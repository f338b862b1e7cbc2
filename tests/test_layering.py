"""The package's layers, as docs/architecture.md draws them: a module imports only from a layer below its
own or from its own package, and no two modules import each other. Every import counts, those inside
functions too (parsed with ast, nothing is imported).
"""

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "spanbert_ds"

# Bottom to top. A module's layer is its package's (spanbert_ds/data/ -> "data") or, for a module directly
# in spanbert_ds/, its own name.
LAYERS = [
    {"errors"},  # what every layer may use: the user's errors (UserError)
    {"folders"},  # and output folders (made, locked, replaced, removed again)
    {"data"},
    {"kernels"},
    {"model"},
    {"run"},  # the run layer: ds_config, ranks, run folder, checkpoints and resuming, monitor, signals
    {"train", "finetune"},  # peers: neither imports the other
    {"interop"},  # Hugging Face's formats, over training's and fine-tuning's folders
    {"cli", "demo", "bench"},  # commands: they hand down what a lower layer needs from above
]

# Imports still upward, for the lead to empty at integration (none left).
ALLOWED = set()


def layer_of(module):
    parts = module.split(".")
    return next(i for i, layer in enumerate(LAYERS) if parts[1] in layer)


def package_of(module):
    return module.split(".")[1]


def modules(root=PACKAGE):
    """{dotted module name: path} of every module of the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        name = ".".join(relative.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name, path):
    """[(line, imported module)] of every project import in the file, at any depth of the code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from spanbert_ds.run import checkpoint` imports the module spanbert_ds.run.checkpoint
            found += [(node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in ALL else base)
                      for alias in node.names]
    return [(line, target) for line, target in found if target.split(".")[0] == "spanbert_ds"]


ALL = modules()


def problems(all_modules):
    """One line per import that breaks the layering: upward, across peers, or one of two modules importing
    each other."""
    edges = {}
    for name, path in all_modules.items():
        for line, target in imports(name, path):
            if target != name and len(target.split(".")) > 1 and name != "spanbert_ds":
                edges.setdefault(name, {}).setdefault(target, line)
    found = []
    for name, targets in sorted(edges.items()):
        where = all_modules[name].relative_to(PACKAGE.parent)
        for target, line in sorted(targets.items()):
            if (name, target) in ALLOWED:
                continue
            if package_of(target) != package_of(name) and layer_of(target) >= layer_of(name):
                how = "a layer above it" if layer_of(target) > layer_of(name) else "a peer in its own layer"
                found.append(f"{where}:{line} imports {target}, {how} ({package_of(name)} -> {package_of(target)})")
            if name in edges.get(target, {}) and name < target:
                found.append(f"{where}:{line} imports {target}, which imports {name} back "
                             f"({all_modules[target].relative_to(PACKAGE.parent)}:{edges[target][name]})")
    return found


def test_every_module_sits_in_a_layer():
    unplaced = [name for name in ALL if name != "spanbert_ds" and
                not any(name.split(".")[1] in layer for layer in LAYERS)]
    assert not unplaced, f"add these to a layer in tests/test_layering.py and docs/architecture.md: {unplaced}"


def test_no_module_imports_upward_or_back():
    found = problems(ALL)
    assert not found, "imports against the layering (docs/architecture.md, Layers):\n" + "\n".join(found)


def test_the_allow_list_names_only_imports_that_exist():
    """So the lead sees it empty itself as the files are fixed: an entry whose import is gone fails here."""
    present = {(name, target) for name, path in ALL.items() for _, target in imports(name, path)}
    assert not ALLOWED - present, f"remove from ALLOWED: {sorted(ALLOWED - present)}"


@pytest.mark.parametrize("source, expected", [
    ({"spanbert_ds/train/loop.py": "def f():\n    from spanbert_ds.interop.hf import config_from_hf\n"},
     "spanbert_ds/train/loop.py:2 imports spanbert_ds.interop.hf, a layer above it (train -> interop)"),
    ({"spanbert_ds/finetune/loop.py": "from spanbert_ds.train.args import load_ds_config\n"},
     "spanbert_ds/finetune/loop.py:1 imports spanbert_ds.train.args, a peer in its own layer (finetune -> train)"),
    ({"spanbert_ds/interop/hf.py": "from spanbert_ds.interop import rtd_hf\n",
      "spanbert_ds/interop/rtd_hf.py": "import torch\n\nfrom spanbert_ds.interop.hf import _rename\n"},
     "spanbert_ds/interop/hf.py:1 imports spanbert_ds.interop.rtd_hf, which imports spanbert_ds.interop.hf back "
     "(spanbert_ds/interop/rtd_hf.py:3)"),
])
def test_the_message_names_the_offending_import(tmp_path, source, expected, monkeypatch):
    for relative, text in source.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "PACKAGE", tmp_path / "spanbert_ds")
    found = modules(tmp_path / "spanbert_ds")
    monkeypatch.setattr(here, "ALL", found)
    assert expected in problems(found)
