"""The repository's layout rules, read from the source (no import of the code under test needed for the first two).

1. Kernels are the ground floor: no module of gls_kernels/ imports gls.
2. No import cycle among the modules of gls/ and gls_kernels/ (every import statement counts, also those
   inside functions).
3. Every op of the backend table (gls.ops.OPS) is found by its name: its reference, its metadata
   (gls/meta/<op>.py), its schema (csrc/ops.cpp), csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu,
   gls_kernels/<op>.py (for the backends it lists), tests/test_<op>.py and bench/test_<op>_bench.py;
   and every kernel file is named for the one op it implements.
4. Library and application apart: the library (gls/ outside gls/app/) imports nothing from gls.app, and the
   command modules gls.train, gls.certify, gls.study and gls.export import only their gls.app counterpart.
5. No private name crosses modules: no module of gls/, gls_kernels/, tests/ or bench/ imports or reads
   another module's `_name` (the compiled library gls._C excepted).
"""
import ast
import re
from pathlib import Path

import pytest

from gls import ops

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gls", "gls_kernels")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of gls/ and gls_kernels/."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _bound_names(path: Path) -> set[str]:
    """Names a module binds at its top level (what `from module import name` finds without importing a submodule)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _imports(name: str, path: Path) -> set[str]:
    """Modules of gls/gls_kernels that `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from base import x`: the submodule base.x if there is one, else x from base when base binds it,
            # else a compiled submodule (gls._C)
            bound = _bound_names(MODULES[base]) if base in MODULES else set()
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES or alias.name not in bound else base)
    return {m for m in found if m.split(".")[0] in PACKAGES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_layout_reader_sees_the_imports():
    """The reader finds known edges (so the rules below cannot pass by reading nothing)."""
    assert "gls.meta" in GRAPH["gls.ops"] and "gls.native" in GRAPH["gls.ops"]
    assert "gls_kernels.common" in GRAPH["gls_kernels.concretize"]
    assert "gls.reference.bound_ops" in GRAPH["gls.meta.backsub_conv_relu"]


def test_kernels_import_nothing_from_gls():
    bad = {name: sorted(m for m in deps if m.split(".")[0] == "gls") for name, deps in GRAPH.items() if name.startswith("gls_kernels")}
    assert not {k: v for k, v in bad.items() if v}, "gls_kernels/ must not import gls"


# ---- the library imports nothing from the application ---------------------------------------------

COMMANDS = {"gls.train": "gls.app.train", "gls.certify": "gls.app.certify", "gls.study": "gls.app.study.cli",
            "gls.export": "gls.app.export"}


def _is_app(name: str) -> bool:
    return name == "gls.app" or name.startswith("gls.app.")


def test_the_library_imports_nothing_from_the_application():
    library = [n for n in GRAPH if n.startswith("gls") and not n.startswith("gls_kernels") and not _is_app(n)
               and n not in COMMANDS]
    assert {"gls", "gls.bounds", "gls.smoothing", "gls.distributed", "gls.meta"} <= set(library)
    bad = {n: sorted(m for m in GRAPH[n] if _is_app(m)) for n in library}
    assert not {k: v for k, v in bad.items() if v}, "the library (gls/ outside gls/app/) must not import gls.app"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_are_entry_modules_of_the_application(command):
    """`python -m gls.<command>` runs a module that only imports the application's main."""
    assert GRAPH[command] == {COMMANDS[command]}, f"{command} must import only {COMMANDS[command]}"
    tree = ast.parse(MODULES[command].read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == COMMANDS[command] and [a.name for a in n.names] == ["main"]
               for n in tree.body)
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], f"{command} defines code"


# ---- no private names across modules -----------------------------------------------------------------

SOURCES = sorted({p for pkg in (*PACKAGES, "tests", "bench") for p in (ROOT / pkg).rglob("*.py")})


EXTENSIONS = {"_C", "_C_cuda_emu"}  # the compiled libraries: their names start with _ by convention


def _private_uses(path: Path) -> list[str]:
    """`from <gls module> import _x` and `<gls module>._x` (through any import alias) in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    alias: dict[str, str] = {}  # local name -> the gls/gls_kernels module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in PACKAGES:
            for a in node.names:
                if a.name.startswith("_") and a.name not in EXTENSIONS:
                    found.append(f"from {node.module} import {a.name}")
                if f"{node.module}.{a.name}" in MODULES:
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"

    def module_of(expr) -> str | None:
        if isinstance(expr, ast.Name):
            return alias.get(expr.id)
        if isinstance(expr, ast.Attribute) and (base := module_of(expr.value)):
            return f"{base}.{expr.attr}" if f"{base}.{expr.attr}" in MODULES else None
        return None

    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and node.attr not in EXTENSIONS and (mod := module_of(node.value))):
            found.append(f"{mod}.{node.attr} (line {node.lineno})")
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "setattr"
              and len(node.args) >= 2 and (mod := module_of(node.args[0])) and isinstance(node.args[1], ast.Constant)
              and str(node.args[1].value).startswith("_")):  # monkeypatch.setattr(module, "_name", ...)
            found.append(f"setattr {mod}.{node.args[1].value} (line {node.lineno})")
    return found


def test_the_private_name_reader_finds_a_use(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import gls.bounds as b\nfrom gls import smoothing\nfrom gls.ops import _x\n"
                 "b._y(smoothing._z)\nmonkeypatch.setattr(b, '_w', 1)\n")
    assert len(_private_uses(f)) == 4


def test_no_private_name_crosses_modules():
    bad = {str(p.relative_to(ROOT)): uses for p in SOURCES if (uses := _private_uses(p))}
    assert not bad, f"private names used from another module: {bad}"


def _cycle() -> list[str] | None:
    """One import cycle among MODULES (edges to modules only, each file's package import not counted), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH.get(node, ())):
            if dep == node or dep not in GRAPH:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "gls.reference.noise", GRAPH["gls.reference.noise"] | {"gls.meta.noise_weighted_sum"})
    assert _cycle() is not None


# ---- every op found by its name -------------------------------------------------------------------

SCHEMAS = set(re.findall(r'm\.def\("(\w+)\(', (ROOT / "csrc" / "ops.cpp").read_text()))


def _kernel_files():
    return sorted((ROOT / "csrc" / "cpu").glob("*.cpp")) + sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def test_the_table_is_read():
    assert {"relu_relax", "backsub_linear_relu", "noise_perturb"} <= set(ops.OPS)


@pytest.mark.parametrize("op", sorted(ops.OPS))
def test_op_files_are_named_for_the_op(op):
    ref_module, kernels = ops.OPS[op]
    ref_path = ROOT / (ref_module.replace(".", "/") + ".py")
    assert re.search(rf"^def {op}\(", ref_path.read_text(), re.M), f"{ref_module} must define {op}"
    assert (ROOT / "gls" / "meta" / f"{op}.py").is_file(), f"gls/meta/{op}.py (its fake kernel and autograd)"
    if {"cpp", "cuda"} & set(kernels):
        assert op in SCHEMAS, f"csrc/ops.cpp must define the schema of {op}"
    if "cpp" in kernels:
        assert (ROOT / "csrc" / "cpu" / f"{op}.cpp").is_file()
    if "cuda" in kernels:
        assert (ROOT / "csrc" / "cuda" / f"{op}.cu").is_file()
    if "triton" in kernels:
        text = (ROOT / "gls_kernels" / f"{op}.py").read_text()
        assert f'custom_op("gls_triton::{op}"' in text and re.search(rf"^def {op}\(", text, re.M)
    for path in (ROOT / "tests" / f"test_{op}.py", ROOT / "bench" / f"test_{op}_bench.py"):
        assert re.search(rf'^OP = "{op}"$', path.read_text(), re.M), f"{path.relative_to(ROOT)} must exist and set OP = {op!r}"


@pytest.mark.parametrize("path", _kernel_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernel_files_implement_the_op_they_are_named_for(path):
    """csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu register exactly gls::<op> (a helper op of the table's ops
    like backsub_linear_relu_backward included: any op with a schema)."""
    assert path.stem in SCHEMAS, f"{path.relative_to(ROOT)} is not named for an op of csrc/ops.cpp"
    assert set(re.findall(r'm\.impl\("(\w+)"', path.read_text())) == {path.stem}


def test_triton_modules_are_ops_or_helpers():
    """gls_kernels/<name>.py defines gls_triton::<name> and nothing else; helpers (common.py, _*.py) define no op."""
    for path in sorted((ROOT / "gls_kernels").glob("*.py")):
        defined = set(re.findall(r'custom_op\("gls_triton::(\w+)"', path.read_text()))
        if path.stem == "__init__" or path.stem == "common" or path.stem.startswith("_"):
            assert not defined, f"helper {path.name} must not define an op"
        else:
            assert defined == {path.stem} and "triton" in ops.OPS[path.stem][1], path.name


def test_cuda_files_reach_the_toolchain_only_through_cuda_compat():
    """csrc/cuda is compiled by nvcc (gls._C) and, unchanged, for the CUDA emulation (gls._C_cuda_emu):
    launches, guards, streams, the device type and registrations go through csrc/cuda/cuda_compat.cuh."""
    forbidden = re.compile(r"<<<|c10::cuda|c10/cuda|TORCH_LIBRARY_IMPL|DeviceType::CUDA|is_cuda\(\)")
    for path in sorted((ROOT / "csrc" / "cuda").glob("*.cu*")):
        if path.name == "cuda_compat.cuh":
            continue
        hits = [line.strip() for line in path.read_text().splitlines() if forbidden.search(line)]
        assert not hits, f"{path.relative_to(ROOT)} bypasses cuda_compat.cuh: {hits}"
