"""The README's Python example runs as written (a broken example is a bug in the product)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    for code in blocks:
        scope: dict = {}
        exec(compile(code, str(README), "exec"), scope)
        if "b" in scope:  # the bounds example ends with a population pass
            assert scope["b"].lower.shape == (64, 8, 9) and scope["b"].upper.shape == (64, 8, 9)
            assert (scope["b"].lower <= scope["b"].upper).all()
            assert scope["loss"].shape == (64,)
