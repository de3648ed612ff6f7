"""The README's example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"## Bring your own model.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(example.strip().splitlines()) < 40
    exec(compile(example, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "head 1.0" in out and "random" in out
    *label, recovered = out.strip().splitlines()[-1].split(" ")
    assert label[0] in ("holds", "refuted", "cancels", "inconclusive")
    assert recovered == "None" or float(recovered) == float(recovered)  # undefined for an untrained model
