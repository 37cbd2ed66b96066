"""The project's import layers: every module imports only from its own layer or the ones below it
(the reading path first, then the plumbing that serves it, then what uses a trained run), so a
reader can take the files in order and a world can be added without touching the layers above."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# lower numbers sit below; a module may import from its own number or a lower one
LAYER = {"formats": 0, "data": 0, "mgda": 0, "model": 1, "rollout": 1, "rewards": 1, "gapo": 2, "scale": 3,
         "worlds": 4, "cli": 5, "runs": 5, "tracking": 5, "loading": 6, "evals": 7, "train": 8, "evaluate": 9,
         "experiments": 10, "benchmarks": 10}


def imports_of(path):
    """(line, module) of every absolute import in the file, inside functions too."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def project_modules():
    for folder, _, files in os.walk(ROOT):
        rel = os.path.relpath(folder, ROOT)
        if rel.split(os.sep)[0] in ("tests", ".git", "runs", "cache", ".venv"):
            continue
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                top = os.path.relpath(path, ROOT).split(os.sep)[0].removesuffix(".py")
                if top in LAYER:
                    yield path, LAYER[top]


def test_no_import_runs_back_up_the_layers():
    modules = list(project_modules())
    assert len(modules) > 30  # the walk found the project
    upward = [f"{os.path.relpath(path, ROOT)}:{line} imports {module}"
              for path, mine in modules for line, module in imports_of(path)
              if LAYER.get(module.split(".")[0], -1) > mine]
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from evals import heldout\n")
    assert [m for _, m in imports_of(bad) if LAYER[m.split(".")[0]] > LAYER["model"]] == [
        "evals"]
