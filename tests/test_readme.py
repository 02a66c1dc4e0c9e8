"""The README's Python examples run as written."""

import re

from tests.conftest import REPO_ROOT


def test_readme_python_examples_run(capsys):
  readme = (REPO_ROOT / 'README.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', readme, re.DOTALL)
  assert len(blocks) >= 2
  namespace = {}
  for block in blocks:  # later blocks build on earlier ones, as a reader's do
    exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out.split()
  # The shard_map example prints the global loss twice: per device and whole.
  assert abs(float(printed[-1]) - float(printed[-2])) < 1e-4
